"""Pin every dependency of the container images: `make constraints` writes image-cpu.txt and
image-gpu.txt here, and the Dockerfiles install with ``-c`` so an image built next month has
the versions tested today.

Each file is pip's own resolution of pyproject.toml's requirements (the base and the image's
extras) for the image's Python and platform, as wheels. The GPU image's base already ships
TensorFlow with NumPy, protobuf and gRPC it was built against: its resolution keeps within
those (NGC TensorFlow 25.02: TensorFlow 2.17, numpy<2, protobuf<5), and leaves TensorFlow out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# What each image installs from pyproject.toml, and what its base image already decided.
IMAGES = {
    "image-cpu.txt": {"extras": ["cpu", "build", "postgres", "tracing"], "bounds": []},
    "image-gpu.txt": {
        "extras": ["build", "postgres", "tracing"],
        "bounds": ["numpy<2", "protobuf<5", "grpcio<1.63", "ml-dtypes<0.5"],
    },
}


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def resolve(wanted: list[str], bounds: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        (Path(scratch) / "bounds.txt").write_text("\n".join(bounds) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
        command += ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp"]
        command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        command += ["--target", scratch, "--report", str(report), "-c", str(Path(scratch) / "bounds.txt"), *wanted]
        subprocess.run(command, check=True)
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


def main() -> int:
    for name, image in IMAGES.items():
        pins = resolve(requirements(image["extras"]), image["bounds"])
        lines = [f"{package}=={version}" for package, version in sorted(pins.items())]
        header = f"# `make constraints` (constraints/resolve.py): Python {PYTHON}, extras {', '.join(image['extras'])}"
        (HERE / name).write_text("\n".join([header, *lines]) + "\n")
        print(f"wrote constraints/{name}: {len(lines)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
