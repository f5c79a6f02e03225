"""One log format for every process of ``imgserve serve``, each line tagged with its process:

    2026-11-25 12:00:00,123 INFO worker-2[1234] server.app: model loaded

or, with ``IMGSERVE_LOG_FORMAT=json``, one JSON object per line, for log collectors:

    {"level":"INFO","logger":"server.app","message":"model loaded","pid":1234,"role":"worker-2",
     "time":"2026-11-25T12:00:00.123000+00:00","request_id":"..."}

Lines written while a request is handled carry its ``request_id`` (``server/request_context.py``);
the access line of a request (``server/access_log.py``) carries its method, path, status and time.

Every process calls ``configure_logging(level, role)`` first. A process that runs uvicorn also
passes ``log_config=uvicorn_log_config(level, role)`` to ``uvicorn.Config`` (or ``uvicorn.run``):
uvicorn applies a log config of its own when its server is configured, by default its own
handlers and format, which would drop the tag. Both give the same configuration: one handler on
the root logger (stderr), and uvicorn's loggers without handlers of their own, propagating to it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.config
import os
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS

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


LogFormat = Literal["text", "json"]

# Attributes uvicorn adds to its records for its own coloured output: not for a JSON line.
_NOT_LOGGED = ("color_message",)


def _json_formatter(role: str) -> dict[str, Any]:
    log_format(role)  # the same check of the role
    return {
        "()": "pythonjsonlogger.orjson.OrjsonFormatter",
        "fmt": ["levelname", "name", "message", "process"],
        "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
        "static_fields": {"role": role},
        "timestamp": "time",
        "reserved_attrs": [*RESERVED_ATTRS, *_NOT_LOGGED],
    }


def uvicorn_log_config(level: str, role: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dictionary of a process, for ``uvicorn.Config(log_config=...)``."""
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    line = {"format": log_format(role)} if fmt == "text" else _json_formatter(role)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn writes use_colors into these two when it is given use_colors; a plain format ignores it.
        "formatters": {"default": line, "access": dict(line)},
        "filters": {"request": {"()": "server.request_context.RequestIdFilter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["request"],
            }
        },
        # No handlers here: uvicorn's lines go up to the root's, with the tag. (uvicorn then sets
        # the levels of its loggers from its log_level, and silences access lines unless access_log.)
        "loggers": {name: {"handlers": [], "level": number, "propagate": True} for name in UVICORN_LOGGERS},
        "root": {"handlers": ["default"], "level": number},
    }


def configure_logging(level: str, role: str, fmt: LogFormat = "text") -> None:
    """The first call of every process: its log lines, uvicorn's included, carry ``role`` and pid."""
    logging.addLevelName(TRACE, "TRACE")
    if fmt == "json":
        # TensorFlow's C++ side writes its own lines past Python's logging: fewer of them.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _json_stderr(role)
    logging.config.dictConfig(uvicorn_log_config(level, role, fmt))


def _json_stderr(role: str) -> None:
    """Every line that reaches this process's stderr leaves it as a JSON object: lines that are
    JSON objects already (Python's logging) as they are, others (a C++ library writing to the
    file descriptor itself, a crash's traceback) wrapped as ``{"logger": "stderr", "message": ...}``.
    Children started after this inherit the pipe, so their foreign lines are wrapped too."""
    if getattr(_json_stderr, "done", False):
        return
    _json_stderr.done = True  # type: ignore[attr-defined]
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pid = os.getpid()

    def relay() -> None:
        with os.fdopen(read_end, "rb") as lines, os.fdopen(original, "wb", buffering=0) as out:
            for line in lines:
                try:
                    is_object = isinstance(orjson.loads(line), dict)
                except orjson.JSONDecodeError:
                    is_object = False
                if not is_object:
                    text = line.decode("utf-8", "replace").rstrip("\n")
                    fields = {"level": "INFO", "logger": "stderr", "message": text, "pid": pid, "role": role}
                    line = orjson.dumps({**fields, "time": datetime.now(timezone.utc).isoformat()}) + b"\n"
                # The reader may have gone (a closed terminal, a dead parent): keep draining the pipe.
                with contextlib.suppress(OSError):
                    out.write(line)

    thread = threading.Thread(target=relay, name="json-stderr", daemon=True)
    thread.start()

    def flush_at_exit() -> None:
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the pipe's last writer here goes: the relay drains
        thread.join(timeout=2)

    atexit.register(flush_at_exit)
