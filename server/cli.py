"""The serving commands of ``imgserve``: serve, health, hash-key. (The build commands are
``trt_build.cli``; ``imgserve.cli`` puts both under one command.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from server.app import create_app
    from server.frontend import ServingServer
    from server.http_server import uvicorn_config
    from server.process_logging import configure_logging, uvicorn_log_config
    from server.settings import Settings
    from server.supervisor import Supervisor, default_workers

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "grpc_port": args.grpc_port,
            "model_repository": args.model_repository,
            "access_log": args.access_log or None,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    workers = default_workers() if args.workers is None else args.workers
    role = "supervisor" if workers else "server"
    configure_logging(settings.log_level, role, settings.log_format)
    if workers:
        return Supervisor(settings, workers).run()
    log_config = uvicorn_log_config(settings.log_level, role, settings.log_format)
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_config=log_config)
    ServingServer(config, app, settings).run()
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the local server is ready: the container HEALTHCHECK, with no curl in the image."""
    import urllib.error
    import urllib.request

    from server.settings import Settings

    settings = Settings.model_validate({})  # fields from IMGSERVE_* variables
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/ready", timeout=args.timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"imgserve health: not ready ({exc})", file=sys.stderr)
        return 1


def _hash_key(args: argparse.Namespace) -> int:
    """A new API key: the key goes to its client (stdout, first line), the line to the keys file."""
    from server.api_keys import new_key_line

    key, line = new_key_line(args.name)
    print(key)
    print(line)
    print(
        "give the key on the first line to the client; append the second line to IMGSERVE_API_KEYS_FILE",
        file=sys.stderr,
    )
    return 0


def _worker_count(text: str) -> int:
    count = int(text)
    if not 0 <= count <= 256:
        raise argparse.ArgumentTypeError("--workers takes 0 (one process) to 256")
    return count


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="serve the model repository over HTTP")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or IMGSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or IMGSERVE_PORT)")
    serve.add_argument(
        "--grpc-port", type=int, help="gRPC port (default 8001, or IMGSERVE_GRPC_PORT); 0 turns gRPC off"
    )
    serve.add_argument("--model-repository", type=Path, help="model repository (default ./models)")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="one line per request and gRPC call (IMGSERVE_ACCESS_LOG; costs throughput)",
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        help="front-end processes beside one model-owner process (default: the CPU cores less one, 1 to 16); "
        "0 runs everything in this one process",
    )
    serve.set_defaults(run=_serve)

    health = commands.add_parser("health", help="exit 0 if the server on IMGSERVE_HOST:IMGSERVE_PORT is ready")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for /ready")
    health.set_defaults(run=_health)

    hash_key = commands.add_parser("hash-key", help="make an API key and its line for IMGSERVE_API_KEYS_FILE")
    hash_key.add_argument(
        "name", help="the client's name (letters, digits, _ . @ -): its rate-limit bucket and log name"
    )
    hash_key.set_defaults(run=_hash_key)
