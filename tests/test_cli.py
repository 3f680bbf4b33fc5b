"""`mqroute server` as users start it: a real subprocess, real signals, a real data directory."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

import mqroute

from .helpers import start_server_process


async def read_rest(process: trio.Process) -> str:
    assert process.stderr is not None
    chunks = []
    while chunk := await process.stderr.receive_some(4096):
        chunks.append(chunk)
    return b"".join(chunks).decode()


async def test_server_serves_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    process, url, log = await start_server_process(tmp_path / "data")
    assert any("data directory" in line for line in log)
    async with mqroute.connect(url, client_name="cli-test") as conn:
        await conn.declare_queue("q")
        await conn.publish("", "q", b"hi")
    process.send_signal(signal.SIGTERM)
    rest = await read_rest(process)
    assert await process.wait() == 0
    assert "opened from 127.0.0.1" in rest
    assert "(native, client 'cli-test', user 'guest', vhost '/')" in rest
    assert "received SIGTERM; shutting down" in rest and "stopped" in rest


async def test_second_server_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    first, _, _ = await start_server_process(tmp_path)
    try:
        result = await trio.run_process(
            [
                *(sys.executable, "-m", "mqroute", "server", "--port", "0"),
                *("--amqp-port", "0", "--data-dir", str(tmp_path)),
            ],
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 1
        assert b"is in use by another mqroute server" in result.stderr
    finally:
        first.send_signal(signal.SIGINT)
        await first.wait()


async def test_a_busy_amqp_port_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = await trio.run_process(
            [
                *(sys.executable, "-m", "mqroute", "server", "--port", "0"),
                *("--amqp-port", port, "--data-dir", str(tmp_path)),
            ],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if "INFO" not in line]
    assert errors == [
        f"Error: cannot listen for AMQP on 127.0.0.1:{port}: Address already in use (choose "
        "another with --amqp-port, or turn it off with --no-amqp)"
    ]


async def test_help_explains_the_options() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", "server", "--help"], capture_stdout=True
    )
    text = result.stdout.decode()
    for option in ("--host", "--port", "--data-dir", "--heartbeat", "--log-level"):
        assert option in text
