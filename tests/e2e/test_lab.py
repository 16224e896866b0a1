"""The lab itself (tests/support.py): what its daemons see of their configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from tests.support import Lab, running_daemon, wait_for


async def test_the_labs_daemon_reads_its_config_file_without_a_failure(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon's watcher reloads `config.source` as it starts, and so does POST
    # /admin/reload: a lab config that named a file never written logged "config reload
    # failed ... file not found" in every test that started a daemon.
    caplog.set_level(logging.DEBUG, logger="aiollmux.reload")
    await lab.add_backends("alpha", "beta")
    config = lab.config()
    async with running_daemon(config) as daemon:
        await wait_for(
            lambda: any(
                record.__dict__.get("by") == "the watcher starting" for record in caplog.records
            )
        )
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            # Ran after the watcher's own reload: the file is the config already applied.
            assert response.status == 200, await response.text()
            assert await response.json() == {"status": "unchanged", "generation": 1}
        assert lab.config() != config  # another config, in a file of its own:
        async with daemon.client.post(f"{daemon.url}/admin/reload") as response:
            assert (await response.json())["status"] == "unchanged"  # not this daemon's
    failures = [r for r in caplog.records if r.__dict__.get("event") == "config_reload_failed"]
    assert failures == []


async def _streaming_socket(lab: Lab) -> socket.socket:
    """A raw client of alpha's fake backend, with chunk 0 of a gated stream read."""
    backend = lab.backends["alpha"]
    body = json.dumps({"stream": True, "chunks": 2, "gate": "g"}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", backend.port))
    await loop.sock_sendall(sock, head.encode() + body)
    seen = b""
    async with asyncio.timeout(10):
        while b'"index": 0' not in seen:
            seen += await loop.sock_recv(sock, 4096)
    return sock


async def test_the_backends_see_a_chunk_written_while_asleep(lab: Lab) -> None:
    # The oracle every invariant test leans on: it must see a stream that goes on while
    # its model sleeps...
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    backend.awake_file.touch()
    sock = await _streaming_socket(lab)
    try:
        backend.awake_file.unlink()
        backend.open_gate("g", 1)
        await wait_for(lambda: backend.in_progress == 0)
    finally:
        sock.close()
    assert backend.violations == ["chunk 1: alpha was asleep"]
    backend.violations.clear()  # seen: the lab's own check at teardown must pass


async def test_a_chunk_nobody_reads_any_more_is_not_a_violation(lab: Lab) -> None:
    # ... and not a chunk of a stream whose reader (aiollmux) closed the connection before
    # the model went to sleep, which the backend's loop had not noticed yet.
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    backend.awake_file.touch()
    sock = await _streaming_socket(lab)
    sock.close()  # the FIN is in the backend's kernel now; its loop reads it later
    backend.awake_file.unlink()
    backend.open_gate("g", 1)  # the handler runs before the loop reads that FIN
    await wait_for(lambda: backend.in_progress == 0)
    assert backend.chunks_sent == 2  # chunk 1 was written (and checked) all the same
    assert backend.violations == []
