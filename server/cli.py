"""``imgserve`` command line: serve, check health, build the default and optimized models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import math

    import uvicorn

    from server.app import create_app
    from server.http_protocol import bounded_http_protocol
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
        # Slow and oversized clients: header limits, header and idle timeouts (server/http_protocol.py).
        http=bounded_http_protocol(settings.http),
        timeout_keep_alive=math.ceil(settings.http.keep_alive_timeout_s),  # the protocol arms the exact value
        ws="none",  # no WebSocket routes: an upgrade would hand the connection to a protocol without those limits
        # uvicorn answers 503 once connections >= limit, counting the asking one: +1 serves max_connections.
        limit_concurrency=settings.http.max_connections + 1,
        # Shutdown waits this long for requests in progress, half-sent bodies included, then cancels them.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        server_header=False,
    )
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


def _build(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.builder import BuildRequest, VerificationFailed, build
    from trt_build.tftrt import TensorRTUnavailable

    request = BuildRequest(
        source=args.source,
        target=args.target,
        precision=args.precision,
        output=args.output,
        max_batch_size=args.max_batch_size,
        calibration_dir=args.calibration_dir,
        eval_dir=args.eval_dir,
        eval_count=args.eval_count,
        min_top1_agreement=args.min_top1_agreement,
        decided_probability=args.decided_probability,
    )
    try:
        manifest = build(request)
    except TensorRTUnavailable as exc:
        print(f"imgserve build: {exc}", file=sys.stderr)
        return 2
    except VerificationFailed as exc:
        print(f"imgserve build: {exc}\n{json.dumps(exc.verification.as_dict(), indent=2)}", file=sys.stderr)
        return 1
    print(json.dumps(manifest["build"], indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.eval_images import evaluation_tensors
    from trt_build.verify import Gate, saved_model_predictor, tflite_predictor, verify

    source = json.loads((args.source / "manifest.json").read_text())
    built = json.loads((args.built / "manifest.json").read_text())
    images = evaluation_tensors(source["preprocessing"], args.eval_count, folder=args.eval_dir)
    built_artifact = args.built / built["artifact"]
    predictor = (
        tflite_predictor(built_artifact) if built["runtime"] == "litert" else saved_model_predictor(built_artifact)
    )
    precision = built.get("build", {}).get("precision", "fp32")
    source_artifact = args.source / source["artifact"]
    result = verify(
        saved_model_predictor(source_artifact), source_artifact, predictor, built_artifact, images,
        Gate.for_precision(precision, args.min_top1_agreement, args.decided_probability),
    )  # fmt: skip
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.passed else 1


def _add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-top1-agreement", type=float, help="override the precision's threshold (fp16 0.995, int8 0.99)"
    )
    parser.add_argument(
        "--decided-probability",
        type=float,
        help="images count for top-1 agreement when the source gives its top class at least this (default 0.5; "
        "0 counts every image)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model repository over HTTP")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or IMGSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or IMGSERVE_PORT)")
    serve.add_argument("--model-repository", type=Path, help="model repository (default ./models)")
    serve.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    serve.set_defaults(run=_serve)

    health = commands.add_parser("health", help="exit 0 if the server on IMGSERVE_HOST:IMGSERVE_PORT is ready")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for /ready")
    health.set_defaults(run=_health)

    hash_key = commands.add_parser("hash-key", help="make an API key and its line for IMGSERVE_API_KEYS_FILE")
    hash_key.add_argument(
        "name", help="the client's name (letters, digits, _ . @ -): its rate-limit bucket and log name"
    )
    hash_key.set_defaults(run=_hash_key)

    build = commands.add_parser("build-default", help="build EfficientNet-Lite0 into the model repository")
    build.add_argument("--repository", default="models", help="model repository (default ./models)")
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.set_defaults(run=_build_default)

    optimize = commands.add_parser("build", help="build an optimized version (LiteRT, TF-TRT) and verify it")
    optimize.add_argument("source", type=Path, help="source version folder, e.g. models/efficientnet_lite0/1")
    optimize.add_argument("--target", choices=["litert", "tftrt"], required=True)
    optimize.add_argument("--precision", choices=["fp32", "fp16", "dynamic", "int8"], default="fp32")
    optimize.add_argument(
        "--output", type=Path, required=True, help="new version folder, e.g. models/efficientnet_lite0/2"
    )
    optimize.add_argument("--max-batch-size", type=int, default=32, help="largest batch engines are built for")
    optimize.add_argument("--calibration-dir", type=Path, help="images for int8 calibration (default: packaged photos)")
    optimize.add_argument("--eval-dir", type=Path, help="images to verify on (default: packaged photos + variations)")
    optimize.add_argument("--eval-count", type=int, default=300, help="how many images to verify on")
    _add_gate_arguments(optimize)
    optimize.set_defaults(run=_build)

    check = commands.add_parser("verify", help="compare a built version with its source on real images")
    check.add_argument("source", type=Path)
    check.add_argument("built", type=Path)
    check.add_argument("--eval-dir", type=Path)
    check.add_argument("--eval-count", type=int, default=300)
    _add_gate_arguments(check)
    check.set_defaults(run=_verify)

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
