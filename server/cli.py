"""``imgserve`` command line: serve, and build the default model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    overrides: dict[str, Any] = {
        k: v for k, v in {"host": args.host, "port": args.port, "model_repository": args.model_repository}.items() if v
    }
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=args.access_log,
    )
    return 0


def _build_default(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.default_model.build import build_default_model

    path = build_default_model(Path(args.repository), force=args.force)
    print(path)
    return 0


def _build_resnet50(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.resnet50 import build_resnet50_random

    print(build_resnet50_random(Path(args.repository), force=args.force))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model repository over HTTP")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or IMGSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or IMGSERVE_PORT)")
    serve.add_argument("--model-repository", type=Path, help="model repository (default ./models)")
    serve.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    serve.set_defaults(run=_serve)

    build = commands.add_parser("build-default", help="build EfficientNet-Lite0 into the model repository")
    build.add_argument("--repository", default="models", help="model repository (default ./models)")
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.set_defaults(run=_build_default)

    resnet = commands.add_parser(
        "build-resnet50", help="build ResNet50 with RANDOM weights (a throughput model) for the keras_jax runtime"
    )
    resnet.add_argument("--repository", default="models_gpu", help="model repository (default ./models_gpu)")
    resnet.add_argument("--force", action="store_true", help="rebuild even if already built")
    resnet.set_defaults(run=_build_resnet50)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
