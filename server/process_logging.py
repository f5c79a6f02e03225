"""One log format for every process of ``imgserve serve``, each line tagged with its process:

    2026-11-25 12:00:00,123 INFO worker-2[1234] server.app: model loaded

Every process calls ``configure_logging(level, role)`` first. A process that runs uvicorn also
passes ``log_config=uvicorn_log_config(level, role)`` to ``uvicorn.Config`` (or ``uvicorn.run``):
uvicorn applies a log config of its own when its server is configured, by default its own
handlers and format, which would drop the tag. Both give the same configuration: one handler on
the root logger (stderr), and uvicorn's loggers without handlers of their own, propagating to it.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

TRACE = 5
"""uvicorn's level below DEBUG."""

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_ROLE = re.compile(r"[A-Za-z0-9_.-]+")


def log_format(role: str) -> str:
    """The format of every line: time, level, role[pid], logger, message. ``role`` names the
    process: supervisor, model-owner, worker-1..."""
    if not _ROLE.fullmatch(role):
        raise ValueError(f"a process role is letters, digits, _ . or -, not {role!r}")
    return f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s"


def uvicorn_log_config(level: str, role: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dictionary of a process, for ``uvicorn.Config(log_config=...)``."""
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    line = {"format": log_format(role)}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn writes use_colors into these two when it is given use_colors; a plain format ignores it.
        "formatters": {"default": line, "access": dict(line)},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        # No handlers here: uvicorn's lines go up to the root's, with the tag. (uvicorn then sets
        # the levels of its loggers from its log_level, and silences access lines unless access_log.)
        "loggers": {name: {"handlers": [], "level": number, "propagate": True} for name in UVICORN_LOGGERS},
        "root": {"handlers": ["default"], "level": number},
    }


def configure_logging(level: str, role: str) -> None:
    """The first call of every process: its log lines, uvicorn's included, carry ``role`` and pid."""
    logging.addLevelName(TRACE, "TRACE")
    logging.config.dictConfig(uvicorn_log_config(level, role))
