"""Jobs end to end with the fake model, a real SQLite file and a real callback receiver on
127.0.0.1: submit, poll, the signed callback, retries, the allow-list, cancellation, a restart,
priority below requests, the limits, and results kept by request id."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api_keys import digest
from server.jobs.callbacks import verify
from tests.fakes import GatedRuntime
from tests.helpers import png, queue_depth, serving, until

pytestmark = pytest.mark.usefixtures("split_models")

SECRET = "callback-secret"
Job = dict[str, Any]


class Receiver:
    """A callback receiver on 127.0.0.1 that answers ``statuses`` in turn (then 200), and
    records every request and every connection it accepts."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def jobs_settings(tmp_path: Path, **jobs: Any) -> dict[str, Any]:
    # Beside the model repository, not in it: the repository's folders are models.
    store = tmp_path.with_name(f"{tmp_path.name}-store.db")
    return {
        "result_store": f"sqlite:///{store}",
        "jobs": {"enabled": True, "lease_s": 2.0, "callback_retry_base_s": 0.05, **jobs},
        "callback_secret": SECRET,
        "callback_allowed_hosts": ["127.0.0.1"],
        "batching": {"max_batch_size": 4},
    }


async def submit(client: httpx.AsyncClient, images: list[bytes], **fields: str) -> httpx.Response:
    files = [("files", (f"image{i}.png", image, "image/png")) for i, image in enumerate(images)]
    return await client.post("/v1/jobs", files=files, data=fields)


async def wait_job(
    client: httpx.AsyncClient, job_id: str, ready: Callable[[Job], bool] | None = None, timeout_s: float = 20.0
) -> Job:
    """The job once ``ready`` says so (by default: once it has finished)."""
    ready = ready or (lambda job: job["status"] in ("done", "failed", "cancelled"))
    deadline = time.monotonic() + timeout_s
    while True:
        job: Job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if ready(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never got there: {job}")
        await asyncio.sleep(0.05)


def delivered(job: Job) -> bool:
    return job["callback"]["status"] in ("delivered", "failed")


def test_a_job_runs_and_its_signed_callback_arrives(tmp_path: Path, receiver: Receiver) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            submitted = await submit(client, [png(1), b"not an image", png(3)], callback_url=receiver.url, top_k="2")
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            assert submitted.headers["Location"] == submitted.json()["status_url"] == f"/v1/jobs/{job_id}"
            job = await wait_job(client, job_id)
            assert job["status"] == "done" and job["images"] == {"total": 3, "done": 3, "failed": 1}
            first, bad, third = job["results"]
            assert first["result"]["class"] == "class1" and len(first["result"]["predictions"]) == 2
            assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_image"
            assert third["filename"] == "image2.png" and third["result"]["class"] == "class3"
            assert job["created_at"] <= job["started_at"] <= job["finished_at"]
            job = await wait_job(client, job_id, delivered)
            assert (job["callback"]["status"], job["callback"]["attempts"]) == ("delivered", 1)

    asyncio.run(scenario())
    ((headers, body),) = receiver.requests
    stamp, signature = headers["x-imgserve-timestamp"], headers["x-imgserve-signature"]
    assert signature.startswith("sha256=") and verify(SECRET.encode(), stamp, signature, body, time.time())
    assert not verify(b"another secret", stamp, signature, body, time.time())
    assert not verify(SECRET.encode(), stamp, signature, body.replace(b"done", b"fail"), time.time())
    # The job's state and counts, and where its results are: a job's results can be megabytes.
    assert b'"status":"done"' in body and b'"failed":1' in body and b'"results"' not in body
    assert b'"status_url":"/v1/jobs/' in body


def test_a_job_whose_images_all_fail_fails_and_still_calls_back(tmp_path: Path, receiver: Receiver) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            submitted = await submit(client, [b"junk", b"GIF89a"], callback_url=receiver.url)
            job = await wait_job(client, submitted.json()["job_id"], delivered)
            assert job["status"] == "failed"
            assert [r["error"]["code"] for r in job["results"]] == ["invalid_image", "invalid_image"]

    asyncio.run(scenario())
    assert b'"status":"failed"' in receiver.requests[0][1] and b'"failed":2' in receiver.requests[0][1]


def test_a_receiver_that_fails_at_first_gets_the_callback_again(tmp_path: Path) -> None:
    with Receiver([500, 503]) as flaky:

        async def scenario() -> None:
            async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
                submitted = await submit(client, [png(1)], callback_url=flaky.url)
                job = await wait_job(client, submitted.json()["job_id"], delivered)
                assert (job["callback"]["status"], job["callback"]["attempts"]) == ("delivered", 3)

        asyncio.run(scenario())
    assert len(flaky.requests) == 3
    # Each attempt is signed afresh: its own timestamp, covered by its own signature.
    for headers, body in flaky.requests:
        stamp, signature = headers["x-imgserve-timestamp"], headers["x-imgserve-signature"]
        assert verify(SECRET.encode(), stamp, signature, body, time.time())


def test_a_receiver_that_never_answers_does_not_hold_up_other_callbacks(tmp_path: Path, receiver: Receiver) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # connects, never answers
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"

        async def scenario() -> None:
            settings = jobs_settings(tmp_path, callback_read_timeout_s=30.0, callback_senders=2)
            async with serving(tmp_path, GatedRuntime(), **settings) as (client, _):
                stuck = (await submit(client, [png(1)], callback_url=hanging)).json()["job_id"]
                await wait_job(client, stuck)
                await asyncio.sleep(0.3)  # its delivery has begun, and waits for an answer
                other = (await submit(client, [png(2)], callback_url=receiver.url)).json()["job_id"]
                job = await wait_job(client, other, delivered, timeout_s=10)
                assert job["callback"]["status"] == "delivered"
                assert (await wait_job(client, stuck))["callback"]["status"] == "pending"
                silent.close()  # its connection is reset: the sender is free before the server stops

        asyncio.run(scenario())


def test_a_callback_that_keeps_failing_shows_as_failed(tmp_path: Path) -> None:
    with Receiver([500] * 10) as broken:

        async def scenario() -> None:
            settings = jobs_settings(tmp_path, callback_max_attempts=2)
            async with serving(tmp_path, GatedRuntime(), **settings) as (client, _):
                submitted = await submit(client, [png(1)], callback_url=broken.url)
                job = await wait_job(client, submitted.json()["job_id"], delivered)
                assert (job["status"], job["callback"]["status"], job["callback"]["attempts"]) == ("done", "failed", 2)
                assert "500" in job["callback"]["error"]

        asyncio.run(scenario())
    assert len(broken.requests) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/hook",
        "ftp://127.0.0.1:{port}/hook",
        "http://user:pw@127.0.0.1:{port}/hook",
        "not a url",
    ],
    ids=["host-not-allowed", "scheme", "user-info", "malformed"],
)
def test_a_callback_url_that_is_not_allowed_is_refused_before_anything_happens(
    tmp_path: Path, receiver: Receiver, url: str
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            refused = await submit(client, [png(1)], callback_url=url.format(port=receiver.port))
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["code"] == "invalid_parameter"
            await asyncio.sleep(0.3)  # a runner would have taken a stored job by now

    asyncio.run(scenario())
    assert receiver.connections == 0 and receiver.requests == []


def test_cancelling_a_running_job_stops_it_at_the_next_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, **jobs_settings(tmp_path)) as (client, _):
            warm = runtime.entered
            runtime.gate.clear()
            job_id = (await submit(client, [png(40 + i) for i in range(12)])).json()["job_id"]
            await until(lambda: runtime.entered == warm + 1)  # its first batch is in the model
            cancelled = await client.delete(f"/v1/jobs/{job_id}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            runtime.gate.set()
            await asyncio.sleep(0.5)
            job = await wait_job(client, job_id)
            assert job["status"] == "cancelled" and job["images"]["done"] <= 4
            assert len([seen for seen in runtime.seen if seen >= 40]) == 4  # no batch after the cancel
            again = await client.delete(f"/v1/jobs/{job_id}")
            assert again.status_code == 200 and again.json()["status"] == "cancelled"

    asyncio.run(scenario())


def test_each_of_a_servers_job_loops_holds_its_leases_under_its_own_name(tmp_path: Path) -> None:
    """With ``concurrency`` 2, a loop whose lease ran out must find its renewal refused once its
    sibling has taken the job up (else both run the whole job): the store tells them apart by
    the name a lease is held under, so each loop needs one of its own."""

    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, **jobs_settings(tmp_path, concurrency=2)) as (client, _):
            runtime.gate.clear()
            ids = [(await submit(client, [png(60 + i)])).json()["job_id"] for i in range(2)]
            for job_id in ids:
                await wait_job(client, job_id, ready=lambda job: job["status"] == "running")
            store = sqlite3.connect(tmp_path.with_name(f"{tmp_path.name}-store.db"))
            try:
                holders = [name for (name,) in store.execute("SELECT claimed_by FROM jobs WHERE status = 'running'")]
            finally:
                store.close()
            runtime.gate.set()
            for job_id in ids:
                assert (await wait_job(client, job_id))["status"] == "done"
        assert len(holders) == 2 and len(set(holders)) == 2, holders

    asyncio.run(scenario())


def test_requests_run_before_a_jobs_images(tmp_path: Path) -> None:
    """A job's batch queued before a request waits behind it: the job runs at a lower priority."""

    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, **jobs_settings(tmp_path)) as (client, app):
            warm = runtime.entered
            runtime.gate.clear()
            headers = {"Content-Type": "image/png"}
            blocker = asyncio.ensure_future(client.post("/v1/classify", content=png(1), headers=headers))
            await until(lambda: runtime.entered == warm + 1)  # the model is busy with it
            job_id = (await submit(client, [png(40 + i) for i in range(8)])).json()["job_id"]
            await until(lambda: queue_depth(app) == 4)  # the job's first batch waits for the model
            live = asyncio.ensure_future(client.post("/v1/classify", content=png(2), headers=headers))
            await until(lambda: queue_depth(app) == 5)
            runtime.gate.set()
            assert [(await r).status_code for r in (blocker, live)] == [200, 200]
            job = await wait_job(client, job_id)
            assert job["status"] == "done"
            assert runtime.seen[-10:] == [1, 2, 40, 41, 42, 43, 44, 45, 46, 47]

    asyncio.run(scenario())


def test_limits_and_refusals(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        settings = jobs_settings(tmp_path, max_images_per_job=3, max_queued_per_client=1)
        async with serving(tmp_path, runtime, **settings, limits={"max_top_k": 4}) as (client, _):
            for count in (4, 5, 12):  # one too many stops the parse at its headers
                too_many = await submit(client, [png(1)] * count, top_k="2")
                assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_images"
                assert "at most 3 images" in too_many.json()["error"]["message"]
            assert (await submit(client, [png(1)], top_k="5")).json()["error"]["code"] == "invalid_parameter"
            assert (await submit(client, [png(1)], top_k="two")).status_code == 422
            assert (await submit(client, [png(1)], model="no_such_model", top_k="2")).status_code == 404
            no_files = await client.post("/v1/jobs", data={"top_k": "2"}, files={"other": ("x", b"")})
            assert no_files.status_code == 400
            raw = await client.post("/v1/jobs", content=png(1), headers={"Content-Type": "image/png"})
            assert raw.status_code == 415
            assert (await client.get("/v1/jobs/no-such-job")).status_code == 404
            assert (await client.delete("/v1/jobs/no-such-job")).status_code == 404
            runtime.gate.clear()
            first = await submit(client, [png(1)], top_k="2")
            assert first.status_code == 202
            busy = await submit(client, [png(2)], top_k="2")
            assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
            runtime.gate.set()
            assert (await wait_job(client, first.json()["job_id"]))["status"] == "done"
            assert (await submit(client, [png(2)], top_k="2")).status_code == 202

    asyncio.run(scenario())


def test_a_client_at_its_limit_is_refused_before_its_upload_is_read(tmp_path: Path) -> None:
    """The 429 of a full queue (and the 404 of jobs turned off) costs the server no upload: it is
    answered before the first byte of the body is asked for."""
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    body = part + png(1) + b"\x00" * 200_000 + b"\r\n--b--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=b"}

    async def upload(client: httpx.AsyncClient) -> tuple[httpx.Response, int]:
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            for start in range(0, len(body), 10_000):
                sent += 1
                yield body[start : start + 10_000]

        return await client.post("/v1/jobs", content=chunks(), headers=headers), sent

    async def scenario() -> None:
        runtime = GatedRuntime()
        settings = jobs_settings(tmp_path, max_queued_per_client=1)
        async with serving(tmp_path, runtime, **settings) as (client, _):
            runtime.gate.clear()
            assert (await submit(client, [png(1)])).status_code == 202
            refused, sent = await upload(client)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) >= 1 and sent <= 1
            runtime.gate.set()
        off = tmp_path.with_name(tmp_path.name + "-off")
        off.mkdir()
        async with serving(off, GatedRuntime(), **{**jobs_settings(off), "jobs": {"enabled": False}}) as (client, _):
            refused, sent = await upload(client)
            assert refused.status_code == 404 and sent <= 1

    asyncio.run(scenario())


def test_without_jobs_enabled_the_routes_say_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, _):
            refused = await submit(client, [png(1)])
            assert refused.status_code == 404 and "IMGSERVE_JOBS__ENABLED" in refused.json()["error"]["message"]

    asyncio.run(scenario())


def test_a_finished_job_and_a_kept_result_survive_a_restart(tmp_path: Path) -> None:
    async def first_life() -> tuple[str, dict[str, Any]]:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            job_id = (await submit(client, [png(4), png(5)])).json()["job_id"]
            job = await wait_job(client, job_id)
            answer = await client.post(
                "/v1/classify", content=png(6), headers={"Content-Type": "image/png", "X-Request-ID": "req-6"}
            )
            for _ in range(50):  # the result is written behind the answer
                if (await client.get("/v1/results/req-6")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            assert (await client.get("/v1/results/req-6")).json() == answer.json()
            return job_id, job

    job_id, job = asyncio.run(first_life())

    async def second_life() -> None:
        async with serving(tmp_path.with_name(tmp_path.name + "-again"), GatedRuntime(), **jobs_settings(tmp_path)) as (
            client,
            _,
        ):
            assert (await client.get(f"/v1/jobs/{job_id}")).json() == job
            kept = await client.get("/v1/results/req-6")
            assert kept.status_code == 200 and kept.json()["class"] == "class6"
            assert (await client.get("/v1/results/req-7")).status_code == 404

    (tmp_path.with_name(tmp_path.name + "-again")).mkdir()
    asyncio.run(second_life())


def test_a_job_and_a_kept_result_are_their_clients_alone(tmp_path: Path) -> None:
    keys = tmp_path.with_name(f"{tmp_path.name}-keys.txt")
    keys.write_text(f"alice {digest('alice-key')}\nbob {digest('bob-key')}\n")
    alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}

    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path), api_keys_file=keys) as (client, _):
            files = [("files", ("a.png", png(1), "image/png"))]
            job_id = (await client.post("/v1/jobs", files=files, headers=alice)).json()["job_id"]
            assert (await client.get(f"/v1/jobs/{job_id}", headers=alice)).status_code == 200
            assert (await client.get(f"/v1/jobs/{job_id}", headers=bob)).status_code == 404
            assert (await client.delete(f"/v1/jobs/{job_id}", headers=bob)).status_code == 404
            assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 401
            image = {"Content-Type": "image/png", "X-Request-ID": "mine/1"}  # a slash in an id is fine
            answer = await client.post("/v1/classify", content=png(2), headers={**image, **alice})
            assert answer.status_code == 200
            for _ in range(50):  # written behind the answer
                kept = await client.get("/v1/results/mine/1", headers=alice)
                if kept.status_code == 200:
                    break
                await asyncio.sleep(0.02)
            assert kept.json() == answer.json()
            assert (await client.get("/v1/results/mine/1", headers=bob)).status_code == 404

    asyncio.run(scenario())


def test_results_come_in_windows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            job_id = (await submit(client, [png(40 + i) for i in range(7)])).json()["job_id"]
            await wait_job(client, job_id)
            window = (await client.get(f"/v1/jobs/{job_id}?offset=2&limit=3")).json()
            assert [r["index"] for r in window["results"]] == [2, 3, 4] and window["results_offset"] == 2
            assert window["images"] == {"total": 7, "done": 7, "failed": 0}
            counts_only = (await client.get(f"/v1/jobs/{job_id}?limit=0")).json()
            assert counts_only["results"] == [] and counts_only["status"] == "done"
            for bad in ("limit=1001", "offset=-1", "limit=x"):
                assert (await client.get(f"/v1/jobs/{job_id}?{bad}")).status_code == 422

    asyncio.run(scenario())


def test_a_jobs_batches_stay_within_the_per_request_limit(tmp_path: Path) -> None:
    """A model batching more images than one request may carry still runs a job: its batches
    are cut to what a request may carry."""

    async def scenario() -> None:
        runtime = GatedRuntime()
        settings = {
            **jobs_settings(tmp_path),
            "batching": {"max_batch_size": 8},
            "limits": {"max_images_per_request": 3},
        }
        async with serving(tmp_path, runtime, **settings) as (client, _):
            job_id = (await submit(client, [png(40 + i) for i in range(7)])).json()["job_id"]
            job = await wait_job(client, job_id)
            assert job["status"] == "done" and job["images"] == {"total": 7, "done": 7, "failed": 0}
            assert max(runtime.batch_sizes[-3:]) <= 3

    asyncio.run(scenario())


def test_the_server_wide_job_queue_is_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, **jobs_settings(tmp_path, max_queued=1)) as (client, _):
            runtime.gate.clear()
            assert (await submit(client, [png(1)])).status_code == 202
            full = await submit(client, [png(2)])
            assert full.status_code == 429 and full.json()["error"]["code"] == "overloaded"
            assert int(full.headers["Retry-After"]) >= 1
            runtime.gate.set()

    asyncio.run(scenario())


def test_a_jobs_upload_has_a_limit_and_a_budget_of_its_own(tmp_path: Path) -> None:
    """Declared too large: 413 before a byte is read. Within its limit, a job's upload takes the
    jobs' budget, not the one requests are admitted by."""

    async def scenario() -> None:
        settings = jobs_settings(tmp_path, max_body_bytes=8192, max_body_bytes_in_flight=8192)
        limits = {"max_body_bytes": 2048, "max_body_bytes_in_flight": 2048}
        async with serving(tmp_path, GatedRuntime(), **settings, limits=limits) as (client, _):
            big = await client.post("/v1/jobs", content=b"x" * 9000, headers={"Content-Type": "multipart/form-data"})
            assert big.status_code == 413
            files = [("files", (f"{i}.png", png(40 + i), "image/png")) for i in range(20)]
            upload = client.build_request("POST", "/v1/jobs", files=files)
            assert 2048 < len(upload.read()) <= 8192  # over the requests' budget, within the jobs' own
            accepted = await client.send(upload)
            assert accepted.status_code == 202, accepted.text

    asyncio.run(scenario())


def test_control_characters_in_a_file_name_do_not_reach_the_store(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), **jobs_settings(tmp_path)) as (client, _):
            # Written by hand: httpx would percent-encode the name.
            part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a\x00b\x07c.png"\r\n\r\n'
            body = part + png(1) + b"\r\n--b--\r\n"
            sent = await client.post(
                "/v1/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
            job_id = sent.json()["job_id"]
            job = await wait_job(client, job_id)
            assert job["results"][0]["filename"] == "abc.png"

    asyncio.run(scenario())
