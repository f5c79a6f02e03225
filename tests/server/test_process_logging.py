"""Every log line of a process says which process wrote it: ours, and uvicorn's own.

The logging checks run in a child interpreter: configuring logging here would change this test
process's handlers for the rest of the suite."""

from __future__ import annotations

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
