"""A LAN peer against the daemon (docs/design.md §5 "Exposure and limits"): which paths reach a
backend, client timeouts, half-closed and pipelined connections, on raw sockets."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import time
from typing import Any

import pytest

import aiollmux.app as app_module
from aiollmux import request_body
from tests.support import Daemon, Lab, hook_commands, running_daemon, wait_for


async def exchange(port: int, data: bytes, *, within: float = 10.0) -> bytes:
    """Send raw bytes, read until the daemon closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(within):
            return await reader.read(-1)
    finally:
        writer.close()


def request(method: str, target: str, body: dict[str, Any] | None = None, **headers: str) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def status_and_json(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body) if body.strip() else None


def port_of(daemon: Daemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sleep?level=2"),
        ("POST", "/collective_rpc"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/pull"),
        ("POST", "/v1"),
        ("POST", "/v1x/chat"),
    ],
)
async def test_private_endpoints_are_not_proxied(lab: Lab, method: str, path: str) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        answer = await exchange(port_of(daemon), request(method, path, {"model": "alpha"}))
        status, body = status_and_json(answer)
        assert status == 404
        assert body["error"]["code"] == "path_not_proxied"
        assert body["error"]["type"] == "invalid_request_error"
    assert lab.backends["alpha"].requests == []
    assert lab.journal.lines() == []  # not even woken


async def test_refused_before_the_body_is_read(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        # Headers announcing 10 MB that never come: the answer must not wait for them.
        head = b"POST /sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
        try:
            writer.write(head)
            async with asyncio.timeout(10):
                line = await reader.readline()
        finally:
            writer.close()
        assert line.startswith(b"HTTP/1.1 404")


@pytest.mark.parametrize(
    "target",
    ["/v1/../sleep", "/v1/%2e%2e/sleep", "/v1/.%2E/sleep", "/v1/./chat", "/v1%2F..%2Fsleep"],
)
async def test_dot_segments_are_refused(lab: Lab, target: str) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='proxy_paths = ["/"]')) as daemon:
        answer = await exchange(port_of(daemon), request("POST", target, {"model": "alpha"}))
        status, body = status_and_json(answer)
        assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert lab.backends["alpha"].requests == []


async def test_per_model_paths_and_percent_decoding(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    per_model = {"alpha": {"proxy_paths": ["/api/chat", "/api/generate"]}}
    async with running_daemon(lab.config(per_model=per_model)) as daemon:
        port = port_of(daemon)
        ok = await exchange(port, request("POST", "/api/chat", {"model": "alpha"}))
        assert status_and_json(ok)[0] == 200
        encoded = await exchange(port, request("POST", "/api%2Fgenerate", {"model": "alpha"}))
        assert status_and_json(encoded)[0] == 200
        # Another model's path: the body is read to find that out, and then refused.
        other = await exchange(port, request("POST", "/api/chat", {"model": "beta"}))
        assert status_and_json(other)[1]["error"]["code"] == "path_not_proxied"
        for target in ("/api/chatty", "/api%2Fdelete", "/%61pi/pull"):
            refused = await exchange(port, request("POST", target, {"model": "alpha"}))
            assert status_and_json(refused)[1]["error"]["code"] == "path_not_proxied", target
        decoded = await exchange(port, request("POST", "/%761/chat/completions", {"model": "beta"}))
        assert status_and_json(decoded)[0] == 200
    assert [r["path"] for r in lab.backends["alpha"].requests] == ["/api/chat", "/api%2Fgenerate"]
    assert [r["path"] for r in lab.backends["beta"].requests] == ["/%761/chat/completions"]


async def test_slash_restores_forwarding_everything(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='proxy_paths = ["/"]')) as daemon:
        answer = await exchange(
            port_of(daemon), request("POST", "/sleep?level=2", {"model": "alpha"})
        )
        assert status_and_json(answer)[0] == 200
    assert [r["path"] for r in lab.backends["alpha"].requests] == ["/sleep?level=2"]


async def test_own_routes_still_answer(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        for path in ("/health", "/metrics", "/v1/models", "/v1/models/alpha", "/admin/status"):
            async with daemon.client.get(daemon.url + path) as response:
                assert response.status == 200, path
        async with await daemon.chat("alpha") as response:
            assert response.status == 200


# -- client timeouts -----------------------------------------------------------------------


async def test_headers_that_never_end_get_408(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top="client_header_timeout_secs = 0.3")) as daemon:
        answer = await exchange(port_of(daemon), b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 ")


async def one_health_check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /health on a kept-alive connection, its answer read whole."""
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)


async def test_idle_keepalive_connection_is_closed(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top="keepalive_timeout_secs = 0.3")) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
        try:
            await one_health_check(reader, writer)
            async with asyncio.timeout(10):
                assert await reader.read(-1) == b""  # closed by the daemon
        finally:
            writer.close()


async def test_a_later_request_dripping_its_headers_is_cut_by_the_keepalive_timer(
    lab: Lab,
) -> None:
    # client_header_timeout_secs bounds the first request only; a later one on the same
    # connection is bounded by aiohttp's keep-alive timer, which bytes arriving do not reset.
    await lab.add_backends("alpha")
    top = "keepalive_timeout_secs = 0.5\nclient_header_timeout_secs = 600"
    async with running_daemon(lab.config(top=top)) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))

        async def drip() -> None:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while not writer.is_closing():
                writer.write(b"a")  # a slow client's pace, not a synchronisation
                await asyncio.sleep(0.05)

        try:
            await one_health_check(reader, writer)
            dripping = asyncio.create_task(drip())
            async with asyncio.timeout(20):
                assert await reader.read(-1) == b""  # closed by the daemon, no answer
            writer.close()
            await asyncio.gather(dripping, return_exceptions=True)
        finally:
            writer.close()


async def test_stalled_body_gets_408(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top="client_body_timeout_secs = 0.3")) as daemon:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
        try:
            writer.write(head + b'{"model": "alpha", ')
            async with asyncio.timeout(10):
                answer = await reader.readuntil(b"}}")
        finally:
            writer.close()
    status, body = status_and_json(answer + b"\n")
    assert (status, body["error"]["code"]) == (408, "invalid_request")
    assert b"connection: close" in answer.lower()
    assert lab.backends["alpha"].requests == []


async def stalled_reader(
    port: int, model: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that asks for an endless stream, reads its first bytes, then reads nothing
    (a small receive buffer, so the daemon's writes back up soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = {"model": model, "stream": True, "chunks": 1_000_000, "pad": 65536}
    writer.write(request("POST", "/v1/chat/completions", body))
    async with asyncio.timeout(10):
        await reader.readuntil(b"data: ")
    return reader, writer


async def test_stalled_reader_cannot_hold_a_drain(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config(top="send_timeout_secs = 1")) as daemon:
        switcher = daemon.mux.switchers["default"]
        _, writer = await stalled_reader(port_of(daemon), "alpha")
        try:
            assert switcher.in_flight("alpha") == 1
            started = time.monotonic()
            async with asyncio.timeout(30):  # without the send timeout: a drain for ever
                async with daemon.client.post(
                    f"{daemon.url}/admin/switch", json={"model": "beta"}
                ) as response:
                    assert response.status == 200
            delay = time.monotonic() - started
        finally:
            writer.close()
        assert switcher.in_flight("alpha") == 0
        assert lab.backends["alpha"].closed_streams == 1  # the upstream request was aborted
    # The switch waited for the send timeout (1 s) plus the time to fill the buffers.
    assert 1.0 <= delay < 20.0, delay


async def test_a_connection_closed_with_a_few_unread_kib_is_cut_and_frees_its_slot(
    lab: Lab,
) -> None:
    # Pipelined requests whose answers the client never reads, the last with
    # `Connection: close`: aiohttp closes the transport with a few KiB unsent (under the
    # 64 KiB that used to pause writing and start the send timer), and close() would wait
    # for the client for ever, holding its slot: with max_connections full, nobody else was
    # served again.
    await lab.add_backends("alpha")
    top = "send_timeout_secs = 1\nkeepalive_timeout_secs = 1\nmax_connections = 2\n"
    async with running_daemon(lab.config(top=top)) as daemon:
        loop = asyncio.get_running_loop()
        one = b"GET /ui/status.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        last = b"GET /ui/status.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        stuck = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port_of(daemon)))
            await loop.sock_sendall(sock, one * 69 + last)
            stuck.append(sock)
        try:
            async with asyncio.timeout(30):  # the send timeout (1 s) per stuck connection
                while True:
                    try:
                        async with asyncio.timeout(3):
                            async with daemon.client.get(f"{daemon.url}/health") as answer:
                                assert answer.status == 200
                                break
                    except TimeoutError:
                        continue  # still waiting in the backlog: ask again
        finally:
            for sock in stuck:
                sock.close()


# -- bounded decoding, logs, forwarded headers ---------------------------------------------


async def test_at_most_two_decodes_at_once(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    await lab.add_backends("alpha")
    release = threading.Event()
    lock = threading.Lock()
    inside, most = 0, 0

    def decoding(body: bytes, encoding: str, limit: int) -> bytes:  # in the thread pool
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(30)
        with lock:
            inside -= 1
        return real_decode(body, encoding, limit)

    read = 0

    async def counting_read(*args: Any) -> bytes:
        nonlocal read
        body = await real_read(*args)
        read += 1  # from here to the decode slot there is no await: waiting, or inside
        return body

    real_decode, real_read = request_body.decoded_body, app_module.read_body
    monkeypatch.setattr(app_module, "decoded_body", decoding)
    monkeypatch.setattr(app_module, "read_body", counting_read)
    body = gzip.compress(json.dumps({"model": "alpha"}).encode())
    async with running_daemon(lab.config()) as daemon:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}

        async def post() -> int:
            url = f"{daemon.url}/v1/chat/completions"
            async with daemon.client.post(url, data=body, headers=headers) as response:
                return response.status

        posts = [asyncio.ensure_future(post()) for _ in range(6)]
        try:
            await wait_for(lambda: read == 6 and inside == 2)
            assert most == 2
        finally:
            release.set()
        assert await asyncio.gather(*posts) == [200] * 6
    assert most == 2


async def test_malformed_requests_log_one_line_without_headers(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await lab.add_backends("alpha")
    secret = "sk-live-" + "s3cr3t" * 4
    bad = [
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x00\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}{'x' * 9000}\r\n\r\n",
    ]
    with caplog.at_level(logging.DEBUG):
        async with running_daemon(lab.config()) as daemon:
            for index in range(40):
                answer = await exchange(port_of(daemon), bad[index % 2].encode())
                assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    server = [r for r in caplog.records if r.name.startswith(("aiohttp", "aiollmux.serverlog"))]
    assert not [r for r in server if r.levelno >= logging.ERROR]
    assert all(secret not in r.getMessage() and not r.exc_info for r in caplog.records)
    malformed = [r for r in caplog.records if getattr(r, "event", None) == "malformed_request"]
    # 40 in well under the run's seconds: one line a second at most, the rest counted.
    assert 1 <= len(malformed) <= 1 + (malformed[-1].created - malformed[0].created)
    assert all(r.levelno == logging.INFO for r in malformed)


async def test_forwarded_for_is_appended_to(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        headers = {"X-Forwarded-For": "203.0.113.7"}
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        url = f"{daemon.url}/v1/chat/completions"
        async with daemon.client.post(url, json={"model": "alpha"}, headers=headers) as response:
            assert response.status == 200
    first, second = (r["headers"]["X-Forwarded-For"] for r in lab.backends["alpha"].requests)
    assert first == "127.0.0.1"
    assert second == "203.0.113.7, 127.0.0.1"


async def test_a_burst_of_600_connections_is_not_dropped(lab: Lab) -> None:
    # With a backlog of 128 most of a burst overflowed the accept queue: those clients
    # waited for a SYN retransmit (at least 1 s). The handshake is the kernel's, so its
    # time does not depend on how fast this machine runs the daemon.
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        loop = asyncio.get_running_loop()
        sockets = [socket.socket() for _ in range(600)]

        async def connect(sock: socket.socket) -> float:
            sock.setblocking(False)
            started = time.monotonic()
            await loop.sock_connect(sock, ("127.0.0.1", port_of(daemon)))
            return time.monotonic() - started

        async def first_byte(sock: socket.socket) -> bytes:
            await loop.sock_sendall(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return await loop.sock_recv(sock, 1)

        try:
            handshakes = await asyncio.gather(*(connect(sock) for sock in sockets))
            async with asyncio.timeout(60):  # generous: a slow machine answers late, not never
                answers = await asyncio.gather(*(first_byte(sock) for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()
    assert max(handshakes) < 1.0, sorted(handshakes)[-5:]
    assert answers == [b"H"] * 600


async def test_secrets_never_reach_hooks(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    await lab.add_backends("alpha")
    monkeypatch.setenv("LLMUX_ADMIN_TOKEN", "admin-env-secret")
    monkeypatch.setenv("COPY_OF_A_KEY", "sk-api-secret")
    monkeypatch.setenv("HARMLESS", "kept")
    dump = lab.tmp / "wake-env.txt"
    wake = f"env > {dump}; " + hook_commands(lab.journal.path, lab.state_dir)["wake"]
    config = lab.config(
        top='api_keys = ["sk-api-secret"]\nadmin_token = "admin-file-secret"\n',
        hooks={"alpha": {"wake": wake}},
    )
    async with running_daemon(config) as daemon:
        headers = {"Authorization": "Bearer sk-api-secret"}
        url = f"{daemon.url}/v1/chat/completions"
        async with daemon.client.post(url, json={"model": "alpha"}, headers=headers) as response:
            assert response.status == 200
    environment = dump.read_text()
    assert "HARMLESS=kept" in environment  # the hook did run and dump its environment
    for secret in ("admin-env-secret", "sk-api-secret", "admin-file-secret", "LLMUX_ADMIN_TOKEN"):
        assert secret not in environment


@pytest.mark.parametrize("target", ["/v1/../x", "/sleep"])
async def test_refused_unread_body_closes_the_connection(lab: Lab, target: str) -> None:
    # Refused before its body was read: the connection cannot be trusted with the next
    # request (with `Connection: Upgrade`, aiohttp stops parsing it as HTTP); the fuzzer's
    # next request on such a connection used to hang.
    await lab.add_backends("alpha")
    body = json.dumps({"model": "alpha", "pad": "x" * 300_000}).encode()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with running_daemon(lab.config()) as daemon:
        answer = await exchange(port_of(daemon), head + body, within=15)  # read until closed
    assert answer.split(b" ", 2)[1] in (b"400", b"404")
    assert b"connection: close" in answer.lower()
