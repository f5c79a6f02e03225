"""Every log line of a process says which process wrote it: ours, and uvicorn's own.

The logging checks run in a child interpreter: configuring logging here would change this test
process's handlers for the rest of the suite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.process_logging import log_format, uvicorn_log_config

REPO = Path(__file__).resolve().parents[2]

# A real uvicorn server on a free port, configured as a worker would be; one request, then exit.
CHILD = """
import logging, socket, threading, time, urllib.request
import uvicorn
from server.process_logging import configure_logging, uvicorn_log_config

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

configure_logging("info", "worker-7")
logging.getLogger("server.app").info("hello from the app")
logging.getLogger("server.app").debug("below the level")
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
config = uvicorn.Config(
    app, log_config=uvicorn_log_config("info", "worker-7"), lifespan="off", access_log=True, use_colors=False
)
server = uvicorn.Server(config)

def client():
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    urllib.request.urlopen("http://127.0.0.1:%d/ping" % sock.getsockname()[1], timeout=30).read()
    server.should_exit = True

threading.Thread(target=client, daemon=True).start()
server.run(sockets=[sock])
"""


def test_our_lines_and_uvicorns_carry_the_role_and_pid() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    lines = (out + err).splitlines()
    tag = rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO worker-7\[{child.pid}\] "
    assert lines and all(re.match(tag, line) for line in lines), lines
    text = "\n".join(lines)
    assert re.search(tag + r"server\.app: hello from the app$", text, re.M)
    assert re.search(tag + rf"uvicorn\.error: Started server process \[{child.pid}\]$", text, re.M)
    assert re.search(tag + r'uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /ping HTTP/1\.1" 204$', text, re.M)
    assert "below the level" not in text


def test_roles_and_levels_are_checked() -> None:
    assert log_format("model-owner").startswith("%(asctime)s %(levelname)s model-owner[%(process)d] ")
    with pytest.raises(ValueError, match="role"):
        log_format("worker 1 %(x)s")
    with pytest.raises(ValueError, match="log level"):
        uvicorn_log_config("loud", "worker-1")
    assert uvicorn_log_config("TRACE", "worker-1")["root"]["level"] == 5


JSON_CHILD = """
import logging, os, sys
from server.process_logging import configure_logging
from server.request_context import request_id

configure_logging("info", "worker-3", "json")
logging.getLogger("server.app").info("plain line")
request_id.set("req-42")
logging.getLogger("server.service").warning("inside a request", extra={"status": 503})
os.write(2, b"a C++ library writing to the descriptor itself\\n")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("server.app").exception("it broke")
"""


def test_json_lines_parse_one_by_one_and_carry_the_request_id() -> None:
    done = subprocess.run([sys.executable, "-c", JSON_CHILD], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line, or this raises
    assert all(isinstance(line, dict) and line["role"] == "worker-3" for line in lines)
    by_message = {line["message"]: line for line in lines}
    plain = by_message["plain line"]
    assert (plain["level"], plain["logger"], plain["pid"]) == ("INFO", "server.app", done_pid(lines))
    assert "request_id" not in plain
    inside = by_message["inside a request"]
    assert (inside["request_id"], inside["status"], inside["level"]) == ("req-42", 503, "WARNING")
    foreign = by_message["a C++ library writing to the descriptor itself"]
    assert foreign["logger"] == "stderr"
    broke = by_message["it broke"]
    assert "ZeroDivisionError" in broke["exc_info"] and broke["request_id"] == "req-42"
    assert all("T" in line["time"] and line["time"].endswith("+00:00") for line in lines)


def done_pid(lines: list[dict[str, object]]) -> object:
    (pid,) = {line["pid"] for line in lines}
    return pid
