"""The supervisor's pure parts: the listening socket and the default number of workers."""

from __future__ import annotations

import argparse
import asyncio
import socket

import pytest

from server.cli import add_commands
from server.supervisor import default_workers, listen


def test_connections_accepted_from_the_shared_socket_send_small_responses_at_once() -> None:
    # Nagle's algorithm on a keep-alive connection held each small response ~40 ms for the
    # client's delayed ACK; asyncio turns it off only on a socket that says it is TCP.
    sock = listen("127.0.0.1", 0)
    nodelay: list[int] = []

    async def scenario() -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            for _ in range(200):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(scenario())
    assert nodelay == [1]


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (4, 3), (16, 15), (64, 16)])
def test_one_worker_per_core_less_one_for_the_model_owner(cores: int, workers: int) -> None:
    assert default_workers(cores) == workers


def serve_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_the_serve_command_takes_a_worker_count_and_refuses_a_negative_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_arguments("--workers", "0").workers == 0
    assert serve_arguments("--workers", "12").workers == 12
    assert serve_arguments().workers is None  # the default: from the cores, when it runs
    with pytest.raises(SystemExit):
        serve_arguments("--workers", "-1")
    assert "--workers takes 0" in capsys.readouterr().err
