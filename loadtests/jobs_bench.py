"""Live requests beside a large job: what a background job costs the clients that wait.

    python -m loadtests.jobs_bench --images 2000 --clients 8 --duration 20

`imgserve serve` with jobs on (a SQLite store in a scratch folder) and the default model. The same
closed loop of live /v1/classify uploads (640x480 JPEGs, wrk when installed) runs twice, side by
side in one run: quiet, then while a job of ``--images`` JPEGs runs in the background at the
jobs' lower priority. Reported: req/s, p50/p99 of each, the ratios, and how far the job got
during the loaded window and how long it took to finish. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.measure import measure_point
from loadtests.payloads import jpeg_payloads, multipart_files, upload_requests
from loadtests.server_process import free_port, server_process


def _job(base_url: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=30).json()
    return job


def _number(point: dict[str, object], key: str) -> float:
    value = point[key]
    assert isinstance(value, (int, float)), (key, value)
    return float(value)


def run(model_repository: Path, images: int, clients: int, duration: float, timeout_s: float) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="imgserve-jobs-bench-"))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "imgserve",
        "serve",
        "--port",
        str(port),
        "--model-repository",
        str(model_repository),
    ]
    photos = jpeg_payloads()
    job_images = [photos[i % len(photos)] for i in range(images)]
    body, content_type = multipart_files("files", job_images)
    # A large job may be larger than the default upload limit (64 MiB): the bench raises it to fit.
    upload_limit = str(max(64 * 1024 * 1024, 2 * len(body)))
    env = {
        "IMGSERVE_JOBS__ENABLED": "true",
        "IMGSERVE_JOBS__MAX_BODY_BYTES": upload_limit,
        "IMGSERVE_JOBS__MAX_BODY_BYTES_IN_FLIGHT": upload_limit,
        "IMGSERVE_RESULT_STORE": f"sqlite:///{scratch / 'store.db'}",
    }
    bodies = upload_requests()
    with server_process(command, port, env, startup_s=300) as (base_url, process):
        quiet = measure_point(base_url, bodies, duration, clients=clients, server_pid=process.pid)
        answer = httpx.post(f"{base_url}/v1/jobs", content=body, headers={"Content-Type": content_type}, timeout=300)
        if answer.status_code != 202:
            raise SystemExit(f"the job was refused: {answer.status_code} {answer.text}")
        job_id = answer.json()["job_id"]
        started = time.monotonic()
        while _job(base_url, job_id)["status"] == "queued" and time.monotonic() - started < 60:
            time.sleep(0.1)
        done_before = _job(base_url, job_id)["images"]["done"]
        beside = measure_point(base_url, bodies, duration, clients=clients, server_pid=process.pid)
        done_during = _job(base_url, job_id)["images"]["done"] - done_before
        while _job(base_url, job_id)["status"] not in ("done", "failed", "cancelled"):
            if time.monotonic() - started > timeout_s:
                break
            time.sleep(0.5)
        final = _job(base_url, job_id)
    return {
        "images": images,
        "clients": clients,
        "duration_s": duration,
        "quiet": quiet,
        "beside_job": beside,
        "throughput_ratio": round(_number(beside, "req_per_s") / _number(quiet, "req_per_s"), 3),
        "p99_ratio": round(_number(beside, "p99_ms") / _number(quiet, "p99_ms"), 3),
        "job_images_during_window": done_during,
        "job_status": final["status"],
        "job_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--images", type=int, default=2000, help="images in the background job")
    parser.add_argument("--clients", type=int, default=8, help="live clients in a closed loop")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each measured window")
    parser.add_argument("--timeout", type=float, default=900.0, help="most seconds to wait for the job to end")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.model_repository, args.images, args.clients, args.duration, args.timeout)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
