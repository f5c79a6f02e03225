"""The Dockerfiles, read and checked without a Docker engine: what they copy exists, the
imgserve commands they run parse, they drop root, and their entrypoint and health check work
when run here with the image's environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from imgserve.cli import build_parser
from loadtests.server_process import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]
IMGSERVE = str(Path(sys.executable).parent / "imgserve")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, out = "", []
    for line in (ROOT / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            joined += stripped.removesuffix("\\") + " "
            continue
        keyword, _, arguments = (joined + stripped).partition(" ")
        out.append((keyword.upper(), arguments.strip()))
        joined = ""
    return out


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in instructions(name):
        if keyword == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def exec_form(name: str, keyword: str) -> list[str]:
    (arguments,) = [a for k, a in instructions(name) if k == keyword]
    if keyword == "HEALTHCHECK":
        arguments = arguments.split(" CMD ", 1)[1]
    command: list[str] = json.loads(arguments)
    return command


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists(name: str) -> None:
    copies = [shlex.split(a) for k, a in instructions(name) if k == "COPY"]
    assert copies
    for *sources, _destination in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{name} copies {source}, which is not in the repository"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_imgserve_commands_it_runs_parse(name: str) -> None:
    runs = [a for k, a in instructions(name) if k == "RUN"]
    commands = [part.strip() for run in runs for part in run.split("&&") if part.strip().startswith("imgserve ")]
    assert any(c.startswith("imgserve build-default") for c in commands), "the default model is built in the image"
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits (SystemExit) on an unknown flag
    built_into = [shlex.split(c)[-1] for c in commands if c.startswith("imgserve build-default")]
    assert built_into == [image_env(name)["IMGSERVE_MODEL_REPOSITORY"]]  # the server serves what was built


@pytest.mark.parametrize("name", DOCKERFILES)
def test_it_serves_as_a_non_root_user(name: str) -> None:
    keywords = [k for k, _ in instructions(name)]
    users = [a for k, a in instructions(name) if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")  # nothing runs as root after
    assert exec_form(name, "ENTRYPOINT") + exec_form(name, "CMD") == ["imgserve", "serve"]


def test_the_gpu_image_pins_an_ngc_tensorflow_base() -> None:
    (base,) = [a for k, a in instructions("Dockerfile.gpu") if k == "ARG" and a.startswith("NGC_TENSORFLOW=")]
    image, _, tag = base.split("=", 1)[1].rpartition(":")
    assert image == "nvcr.io/nvidia/tensorflow" and tag[:2].isdigit() and "latest" not in tag


@pytest.mark.e2e
@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_and_health_check_work_with_the_image_environment(name: str, model_repository: Path) -> None:
    port = free_port()
    # The image's environment, but on loopback, a free port and this machine's repository.
    env = (
        os.environ
        | image_env(name)
        | {
            "IMGSERVE_HOST": "127.0.0.1",
            "IMGSERVE_PORT": str(port),
            "IMGSERVE_GRPC_PORT": str(free_port()),
            "IMGSERVE_MODEL_REPOSITORY": str(model_repository),
        }
    )
    entrypoint = [IMGSERVE if part == "imgserve" else part for part in exec_form(name, "ENTRYPOINT")]
    health = [IMGSERVE if part == "imgserve" else part for part in exec_form(name, "HEALTHCHECK")]
    env_without_server = {**env, "IMGSERVE_PORT": str(free_port())}
    assert subprocess.run(health, env=env_without_server, capture_output=True, timeout=60).returncode == 1
    with server_process(entrypoint + exec_form(name, "CMD"), port, env, startup_s=180):
        assert subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 0


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_installed_package_is_copied(name: str) -> None:
    """A package missing from the image fails only when the container starts (ImportError)."""
    copied = {shlex.split(a)[0] for k, a in instructions(name) if k == "COPY"}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", "loadtests")}
    assert packages <= copied, f"{name} does not copy {sorted(packages - copied)}"
    assert "loadtests" not in copied, "load tests are not shipped in the runtime image"


def _installs(name: str) -> tuple[Path, list[str]]:
    """The constraints file and the extras of the image's ``pip install -c FILE ".[extras]"``."""
    (install,) = [a for k, a in instructions(name) if k == "RUN" and " pip install " in a]
    words = shlex.split(install.split("&&")[0])
    constraints = ROOT / words[words.index("-c") + 1]
    (target,) = [w for w in words if w.startswith(".")]
    extras = target.removeprefix(".").strip("[]")
    return constraints, [e for e in extras.split(",") if e]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_dependency_of_the_image_is_pinned(name: str) -> None:
    constraints, extras = _installs(name)
    assert "build" in extras, "imgserve build needs its default photos in the image"
    pins = {}
    for line in constraints.read_text().splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            pins[package.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    for requirement in wanted:
        package = _name(requirement)
        assert pins.get(package), f"{name}: {package} is not pinned in {constraints.name} (run `make constraints`)"
        assert Requirement(requirement).specifier.contains(pins[package], prereleases=True), (
            f"{constraints.name} pins {package}=={pins[package]}, outside {requirement} (run `make constraints`)"
        )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_serving_user_cannot_change_the_models(name: str) -> None:
    runs = " ".join(a for k, a in instructions(name) if k == "RUN")
    assert "chown" not in runs
    assert "chmod -R a+rX,go-w " + image_env(name)["IMGSERVE_MODEL_REPOSITORY"] in runs
