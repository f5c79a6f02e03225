"""``imgserve`` command line: serve, check health, make API keys; build and verify models."""

from __future__ import annotations

import argparse
import sys

from server import cli as serving
from trt_build import cli as building


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serving.add_commands(commands)
    building.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
