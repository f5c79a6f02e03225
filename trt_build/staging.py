"""Publishing a model version whole or not at all: every command that writes one stages it in a
fresh folder beside its destination and renames it into place only once it has passed its gate,
so a server polling the repository never sees a half-written or unverified version.

Staging folders are hidden (their names start with a dot) and never named with digits, so the
repository scan skips them; one left by a crash is not a version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model_contract.manifest import version_number


def check_new_version(output: Path) -> None:
    """Refuse an ``output`` that is not a new version folder ``<repository>/<model>/<number>``."""
    model = output.parent.name
    if version_number(output.name) is None or not model or model.startswith("."):
        raise ValueError(f"output must be a version folder <repository>/<model>/<number>, not {output}")
    if output.exists():
        raise FileExistsError(f"{output} already exists; versions are never overwritten")


@contextmanager
def staged_version(output: Path) -> Iterator[Path]:
    """An empty folder beside ``output`` to write the version into; ``publish`` renames it into
    place. Whatever is still staged when the block ends (a failed gate, an exception) is removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".staging-") as tmp:
        staging = Path(tmp) / "version"
        staging.mkdir()
        yield staging


def publish(staging: Path, output: Path) -> None:
    """Rename the staged version into place: one step, on the same file system."""
    if output.exists():  # renaming onto an empty folder would replace it silently
        raise FileExistsError(f"{output} appeared while the version was being built; not overwritten")
    staging.rename(output)
