"""The proxy surface end to end: what reaches the backend, what comes back, and every error.

The daemon runs on a real socket; requests that need exact control of their header lines
are written to a raw TCP connection.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from aiollmux.app import _is_loopback
from tests.support import (
    Daemon,
    FakeBackend,
    Lab,
    free_port,
    raw_exchange,
    running_daemon,
)

# docs/design.md §5: each error code's HTTP status; 4xx are `invalid_request_error`.
ERROR_STATUS = {
    "model_required": 400,
    "invalid_json": 400,
    "unauthorized": 401,
    "model_not_found": 404,
    "body_too_large": 413,
    "backend_error": 502,
    "queue_full": 503,
    "wake_failed": 503,
    "model_timeout": 504,
}
GZIPPED = gzip.compress(b'{"answer": "compressed on the backend"}', mtime=0)
CHAT = "/v1/chat/completions"


async def assert_error(response: aiohttp.ClientResponse, code: str) -> dict[str, Any]:
    """The response is the OpenAI-shaped error `code` with docs/design.md §5's status and type."""
    assert response.status == ERROR_STATUS[code], await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "code"} <= set(error)
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    if response.status < 500:
        assert error["type"] == "invalid_request_error"
    else:
        assert error["type"] in {"server_error", "llmux_error"}
    return error


def counted(metrics: str, model: str, status: int) -> float:
    prefix = f'llmux_requests_total{{model="{model}",status="{status}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


@dataclass
class SpecialBackend(FakeBackend):
    """A FakeBackend that also keeps raw request targets and has a few canned replies."""

    raw_paths: list[str] = field(default_factory=list)
    raw_headers: list[list[tuple[str, str]]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.raw_paths.append(request.raw_path)
        self.raw_headers.append([(k.decode(), v.decode()) for k, v in request.raw_headers])
        if request.path == "/special/gzip":
            await super()._handle(request)  # keeps the awake check and the record
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            return web.Response(body=GZIPPED, headers=headers)
        if request.path == "/special/headers":
            await super()._handle(request)
            response = web.Response(text="headers")
            response.headers.update(
                {
                    "X-Backend": self.model,
                    "X-Custom-Reply": "kept",
                    "Connection": "keep-alive, X-Hop-Reply",
                    "Keep-Alive": "timeout=5",
                    "X-Hop-Reply": "dropped",
                    "Proxy-Authenticate": 'Basic realm="x"',
                    "Upgrade": "h2c",
                    "Trailer": "X-Checksum",
                }
            )
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        return await super()._handle(request)


async def add_special(lab: Lab, model: str = "alpha") -> SpecialBackend:
    backend = SpecialBackend(model, lab.state_dir)
    await backend.start()
    lab.backends[model] = backend
    return backend


@pytest.fixture
async def alpha(lab: Lab) -> SpecialBackend:
    return await add_special(lab)


@pytest.fixture
async def daemon(lab: Lab, alpha: SpecialBackend) -> AsyncIterator[Daemon]:
    # The special backend's answers live under /special/: proxied too (proxy_paths,
    # docs/design.md §5).
    async with running_daemon(lab.config(top='proxy_paths = ["/v1/", "/special/"]')) as daemon:
        yield daemon
    assert lab.violations() == []


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# -- what reaches the backend ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
async def test_method_target_and_body_reach_the_backend_unchanged(
    daemon: Daemon, alpha: SpecialBackend, method: str
) -> None:
    # Sent as written (yarl would normalise it otherwise): the backend must see the same.
    target = "/v1/some%20path/a%2fb/c%7Ed;v=1?q=a%20b&q=2&enc=%2F%3F%26%3D&u=%C3%BC&plus=a+b&empty="
    body = b'{ "model" :"alpha",\n "messages": [{"role":"user","content":"h\\u00e9 \xc3\xa9"}]}'
    headers = {"Content-Type": "application/json"}
    async with daemon.client.request(
        method, URL(daemon.url + target, encoded=True), data=body, headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["X-Backend"] == "alpha"
    seen = alpha.requests[-1]
    assert seen["method"] == method
    assert seen["body"] == body
    assert alpha.raw_paths[-1] == target


async def test_request_hop_by_hop_headers_are_dropped(
    daemon: Daemon, alpha: SpecialBackend
) -> None:
    body = b'{"model": "alpha", "messages": []}'
    request = (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
        b"Host: llmux.example\r\n"
        b"Connection: close, X-Drop-Me\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Drop-Me: named in Connection\r\n"
        b"X-Custom: kept\r\n"
        b"X-Custom: twice\r\n"
        b"Accept-Encoding: gzip, br\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Authorization: Bearer backend-key\r\n"
        b"User-Agent: test-client/1.0\r\n"
        b"\r\n" + chunked(body, 7)
    )
    response = await raw_exchange(daemon.url, request)
    assert response is not None
    assert response.status == 200
    assert json.loads(response.body)["model"] == "alpha"
    assert alpha.requests[-1]["body"] == body
    received = CIMultiDict(alpha.raw_headers[-1])
    for dropped in (
        "Keep-Alive", "TE", "Transfer-Encoding", "Upgrade", "Proxy-Authorization",
        "Proxy-Connection", "X-Drop-Me",
    ):  # fmt: skip
        assert dropped not in received, dropped
    assert "x-drop-me" not in received.get("Connection", "").lower()
    assert received["Content-Length"] == str(len(body))
    assert received.getall("X-Custom") == ["kept", "twice"]
    assert received["Accept-Encoding"] == "gzip, br"
    assert received["Content-Type"] == "application/json; charset=utf-8"
    assert received["Authorization"] == "Bearer backend-key"  # no api_keys: passes through
    assert received["User-Agent"] == "test-client/1.0"


async def test_expect_continue_works_with_a_backend_that_never_sends_100(lab: Lab) -> None:
    # RFC 9110 §10.1.1 lets a server skip `100 Continue` and simply read the body (many
    # do); curl sends `Expect: 100-continue` with every body over 1 MiB.
    awake_file = lab.state_dir / "alpha.awake"
    seen: list[bytes] = []
    asleep: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not awake_file.exists():
            asleep.append(head)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        seen.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        async with running_daemon(lab.config(ports={"alpha": port})) as daemon:
            async with asyncio.timeout(3):  # a bound for the failure only; success is instant
                async with daemon.client.post(
                    daemon.url + CHAT, json={"model": "alpha"}, headers={"Expect": "100-continue"}
                ) as response:
                    assert response.status == 200
                    assert await response.read() == b"ok"
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [b'{"model": "alpha"}']
    assert asleep == []


# -- what comes back -----------------------------------------------------------------------------


async def test_response_headers_pass_and_hop_by_hop_ones_are_dropped(daemon: Daemon) -> None:
    body = b'{"model": "alpha"}'
    request = (
        b"POST /special/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    proxied = await raw_exchange(daemon.url, request)
    assert proxied is not None
    assert proxied.status == 200
    assert proxied.body == b"headers"
    # The backend really sends them (the model is awake now), so their absence means something.
    port = daemon.mux.config.models["alpha"].port
    direct = await raw_exchange(f"http://127.0.0.1:{port}", request)
    assert direct is not None
    hop_by_hop = ("Keep-Alive", "X-Hop-Reply", "Proxy-Authenticate", "Upgrade", "Trailer")
    for name in hop_by_hop:
        assert name in direct.headers, name
        assert name not in proxied.headers, name
    assert "x-hop-reply" not in proxied.headers.get("Connection", "").lower()
    for response in (direct, proxied):
        assert response.headers["X-Backend"] == "alpha"
        assert response.headers["X-Custom-Reply"] == "kept"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_gzip_body_passes_through_still_compressed(daemon: Daemon) -> None:
    payload = {"model": "alpha"}
    headers = {"Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw_client,
        raw_client.post(daemon.url + "/special/gzip", json=payload, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert await response.read() == GZIPPED
    async with daemon.client.post(daemon.url + "/special/gzip", json=payload) as response:
        assert await response.json() == {"answer": "compressed on the backend"}


@pytest.mark.parametrize("status", [201, 400, 404, 422, 500, 503])
async def test_backend_status_and_body_pass_through(daemon: Daemon, status: int) -> None:
    async with await daemon.chat("alpha", status=status) as response:
        assert response.status == status
        assert response.headers["X-Backend"] == "alpha"
        answer = await response.json()
    assert answer["model"] == "alpha"
    assert answer["echo"]["status"] == status
    assert counted(await daemon.metrics(), "alpha", status) == 1


async def test_requests_are_counted_by_model_and_status(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config()) as daemon:
        for model, status in [("alpha", 200), ("alpha", 200), ("beta", 500), ("alpha", 400)]:
            async with await daemon.chat(model, status=status) as response:
                assert response.status == status
        async with await daemon.chat("nope") as response:
            await assert_error(response, "model_not_found")
        metrics = await daemon.metrics()
    assert counted(metrics, "alpha", 200) == 2
    assert counted(metrics, "alpha", 400) == 1
    assert counted(metrics, "beta", 500) == 1
    assert counted(metrics, "beta", 200) == 0
    assert "nope" not in metrics  # an unknown id never becomes a label
    assert 'llmux_request_duration_seconds_count{model="alpha",status="200"} 2.0' in metrics


# -- routing by body -----------------------------------------------------------------------------


async def test_upstream_model_is_spliced_into_the_forwarded_body(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    per_model = {"alpha": {"upstream_model": 'qwen3:8b "q4"', "aliases": ["a1"]}}
    async with running_daemon(lab.config(per_model=per_model)) as daemon:
        template = b'{"messages": [{"role": "user", "content": "\\u00e9"}],\n "model" : %s }'
        for name in ("a1", "alpha"):
            sent = template % json.dumps(name).encode()
            async with daemon.client.post(
                daemon.url + CHAT, data=sent, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200
                assert (await response.json())["echo"]["model"] == 'qwen3:8b "q4"'
            forwarded = lab.backends["alpha"].requests[-1]["body"]
            assert forwarded == template % b'"qwen3:8b \\"q4\\""'
        # A model without upstream_model is forwarded byte for byte.
        async with await daemon.chat("beta") as response:
            assert (await response.json())["echo"]["model"] == "beta"
        metrics = await daemon.metrics()
    assert counted(metrics, "alpha", 200) == 2
    assert (
        lab.backends["beta"].requests[-1]["body"]
        == json.dumps({"model": "beta", "messages": [{"role": "user", "content": "hi"}]}).encode()
    )


def form_body(boundary: str, model: str, audio: bytes) -> bytes:
    dash = b"--" + boundary.encode()
    return (
        dash + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n"
        + dash + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        + model.encode() + b"\r\n"
        + dash + b'\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        + dash + b"--\r\n"
    )  # fmt: skip


async def test_multipart_audio_is_routed_by_its_model_field(lab: Lab) -> None:
    await lab.add_backends("alpha", "whisper")
    per_model = {"whisper": {"upstream_model": "whisper-large-v3", "aliases": ["w"]}}
    audio = b"RIFF\x00\xff\r\n\r\nWAVE" + b'Content-Disposition: form-data; name="model"' * 3
    boundary = "llmuxTestBoundary"
    content_type = f"multipart/form-data; boundary={boundary}"
    async with running_daemon(lab.config(per_model=per_model)) as daemon:
        for model, backend in [("alpha", "alpha"), ("w", "whisper"), ("whisper", "whisper")]:
            body = form_body(boundary, model, audio)
            async with daemon.client.post(
                daemon.url + "/v1/audio/transcriptions",
                data=body,
                headers={"Content-Type": content_type},
            ) as response:
                assert response.status == 200
                assert response.headers["X-Backend"] == backend
            seen = lab.backends[backend].requests[-1]
            assert seen["headers"]["Content-Type"] == content_type
            expected = model if backend == "alpha" else "whisper-large-v3"
            assert seen["body"] == form_body(boundary, expected, audio)
        # aiohttp's own FormData encoder (quoted names, its own boundary) is understood too.
        form = aiohttp.FormData()
        form.add_field("file", audio, filename="b.wav", content_type="audio/wav")
        form.add_field("model", "alpha")
        async with daemon.client.post(
            daemon.url + "/v1/audio/transcriptions", data=form
        ) as response:
            assert response.headers["X-Backend"] == "alpha"
        no_model = form_body(boundary, "", audio)
        async with daemon.client.post(
            daemon.url + "/v1/audio/transcriptions",
            data=no_model,
            headers={"Content-Type": content_type},
        ) as response:
            await assert_error(response, "model_required")


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"", "application/json", "model_required"),
        (b"  \r\n", "", "model_required"),
        (b'{"messages": []}', "application/json", "model_required"),
        (b'{"model": 5}', "application/json", "model_required"),
        (b'{"model": ""}', "application/json", "model_required"),
        (b'[{"model": "alpha"}]', "application/json", "model_required"),
        (b'{"metadata": {"model": "alpha"}}', "application/json", "model_required"),
        (b'{"model": "alpha"', "application/json", "invalid_json"),
        (b"{'model': 'alpha'}", "", "invalid_json"),
        (b'{"model": "alpha"} {}', "application/json", "invalid_json"),
        (b'{"model": "\xff"}', "application/json", "invalid_json"),
        (b'{"model": "nope"}', "application/json", "model_not_found"),
        (b"--b\r\n\r\n\r\n--b--", "multipart/form-data; boundary=b", "model_required"),
        (b"x", "multipart/form-data", "model_required"),
    ],
)
async def test_request_errors_are_openai_shaped(
    lab: Lab, daemon: Daemon, body: bytes, content_type: str, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with daemon.client.post(daemon.url + CHAT, data=body, headers=headers) as response:
        await assert_error(response, code)
    assert lab.journal.lines() == []  # nothing was woken for a refused request


async def test_body_too_large(lab: Lab) -> None:
    await add_special(lab)
    limit = 64 * 1024
    config = lab.config(top=f"max_request_body_mb = {limit / (1024 * 1024)}\n")
    assert config.max_request_body_bytes == limit

    def body_of(size: int) -> bytes:
        head = b'{"model": "alpha", "pad": "'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    async with running_daemon(config) as daemon:
        url = daemon.url + CHAT
        # Declared too large: refused before the body is read.
        async with daemon.client.post(url, data=body_of(limit + 1)) as response:
            error = await assert_error(response, "body_too_large")
        assert str(limit) in error["message"]
        # No Content-Length (chunked): refused once the count passes the limit.
        async with daemon.client.post(url, data=chunks(body_of(limit * 16))) as response:
            await assert_error(response, "body_too_large")
        assert lab.journal.lines() == []
        assert lab.backends["alpha"].requests == []
        # Exactly at the limit, declared or chunked, is fine.
        for data in (body_of(limit), chunks(body_of(limit))):
            async with daemon.client.post(url, data=data) as response:
                assert response.status == 200
        assert [len(r["body"]) for r in lab.backends["alpha"].requests] == [limit, limit]


async def test_unreachable_backend_is_502(lab: Lab) -> None:
    async with running_daemon(lab.config(ports={"ghost": free_port()})) as daemon:
        async with await daemon.chat("ghost") as response:
            error = await assert_error(response, "backend_error")
        assert "ghost" in error["message"]
        assert counted(await daemon.metrics(), "ghost", 502) == 1


async def test_failed_wake_is_503(lab: Lab) -> None:
    await add_special(lab)
    hooks = {"alpha": {"wake": "echo 'no GPU left' >&2; exit 7"}}
    async with running_daemon(lab.config(hooks=hooks)) as daemon:
        async with await daemon.chat("alpha") as response:
            error = await assert_error(response, "wake_failed")
        assert "no GPU left" in error["message"]


# -- authentication ------------------------------------------------------------------------------


async def test_api_keys(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMUX_ADMIN_TOKEN", raising=False)
    alpha = await add_special(lab)
    config = lab.config(top='api_keys = ["sk-one", "sk-two"]\n')
    async with running_daemon(config) as daemon:
        refused: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer sk-three"},
            {"Authorization": "Bearer sk-one-more"},
            {"Authorization": "Basic sk-one"},
            {"Authorization": "sk-one"},
            {"Authorization": "Bearer "},
        ]
        for headers in refused:
            async with daemon.client.post(
                daemon.url + CHAT, json={"model": "alpha"}, headers=headers
            ) as response:
                await assert_error(response, "unauthorized")
            for path in ("/v1/models", "/v1/models/alpha"):
                async with daemon.client.get(daemon.url + path, headers=headers) as response:
                    await assert_error(response, "unauthorized")
        # Checked before the body: even a request without a model is refused as unauthorized.
        async with daemon.client.post(daemon.url + CHAT, data=b"") as response:
            await assert_error(response, "unauthorized")
        assert lab.journal.lines() == []
        assert alpha.requests == []
        for key in ("sk-one", "sk-two"):
            for scheme in ("Bearer", "bearer"):
                headers = {"Authorization": f"{scheme} {key}", "X-Other": "kept"}
                async with daemon.client.post(
                    daemon.url + CHAT, json={"model": "alpha"}, headers=headers
                ) as response:
                    assert response.status == 200
                received = {k.lower() for k in alpha.requests[-1]["headers"]}
                assert "authorization" not in received
                assert "x-other" in received
                async with daemon.client.get(daemon.url + "/v1/models", headers=headers) as r:
                    assert [m["id"] for m in (await r.json())["data"]] == ["alpha"]
                async with daemon.client.get(daemon.url + "/v1/models/alpha", headers=headers) as r:
                    assert (await r.json())["id"] == "alpha"
        for path in ("/health", "/metrics"):
            async with daemon.client.get(daemon.url + path) as response:
                assert response.status == 200
        async with daemon.client.get(daemon.url + "/admin/status") as response:
            assert response.status == 200  # admin is guarded by admin_token, not api_keys


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
        ("fe80::1%eth0", False),
        ("2001:db8::1", False),
        ("not an address", False),
        (None, False),
    ],
)
def test_which_clients_count_as_loopback(remote: str | None, loopback: bool) -> None:
    assert _is_loopback(remote) is loopback


def test_ipv4_mapped_loopback_counts_as_loopback() -> None:
    # With host = "::" (dual stack) a local IPv4 client is seen as ::ffff:127.0.0.1.
    assert _is_loopback("::ffff:127.0.0.1")


async def test_admin_routes_from_loopback_need_no_token(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMUX_ADMIN_TOKEN", raising=False)
    async with daemon.client.get(daemon.url + "/admin/status") as response:
        assert response.status == 200
        assert (await response.json())["state"] == "idle"


@pytest.mark.parametrize("from_env", [False, True])
async def test_admin_token(lab: Lab, monkeypatch: pytest.MonkeyPatch, from_env: bool) -> None:
    await add_special(lab)
    if from_env:
        monkeypatch.setenv("LLMUX_ADMIN_TOKEN", "s3cret")
        config = lab.config()
    else:
        monkeypatch.delenv("LLMUX_ADMIN_TOKEN", raising=False)
        config = lab.config(top='admin_token = "s3cret"\n')
    routes = [
        ("GET", "/admin/status", None),
        ("POST", "/admin/switch", {"model": "alpha"}),
        ("POST", "/admin/sleep", None),
    ]
    async with running_daemon(config) as daemon:
        for method, path, payload in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                async with daemon.client.request(
                    method, daemon.url + path, json=payload, headers=headers
                ) as response:
                    await assert_error(response, "unauthorized")
        assert lab.journal.lines() == []
        right = {"Authorization": "Bearer s3cret"}
        for method, path, payload in routes:
            async with daemon.client.request(
                method, daemon.url + path, json=payload, headers=right
            ) as response:
                assert response.status == 200, path
        # The admin token is not an API key: proxied routes stay open without api_keys.
        async with await daemon.chat("alpha") as response:
            assert response.status == 200


# -- admin switch and sleep ----------------------------------------------------------------------


async def test_admin_switch_errors(lab: Lab, daemon: Daemon) -> None:
    url = daemon.url + "/admin/switch"
    async with daemon.client.post(url, json={"model": "nope"}) as response:
        await assert_error(response, "model_not_found")
    for payload in ({}, {"model": ""}, {"model": 3}, {"other": "alpha"}):
        async with daemon.client.post(url, json=payload) as response:
            await assert_error(response, "model_required")
    async with daemon.client.post(url) as response:
        await assert_error(response, "model_required")
    async with daemon.client.post(url, data=b"{not json") as response:
        await assert_error(response, "invalid_json")
    async with daemon.client.post(url, json=["alpha"]) as response:
        await assert_error(response, "invalid_json")
    assert lab.journal.lines() == []
    assert (await daemon.status())["state"] == "idle"


async def test_admin_switch_then_sleep(lab: Lab) -> None:
    alpha = await add_special(lab)
    await lab.add_backends("beta")
    config = lab.config(per_model={"beta": {"aliases": ["b1"]}})
    async with running_daemon(config) as daemon:
        async with daemon.client.post(
            daemon.url + "/admin/switch", json={"model": "alpha"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["active_model"] == "alpha"
        assert alpha.awake
        assert (await daemon.status())["active_model"] == "alpha"
        async with daemon.client.post(daemon.url + "/admin/switch", json={"model": "b1"}) as r:
            assert (await r.json())["active_model"] == "beta"
        async with daemon.client.post(daemon.url + "/admin/sleep") as response:
            assert response.status == 200
            assert (await response.json())["state"] == "idle"
        status = await daemon.status()
        assert status["state"] == "idle"
        assert status["active_model"] is None
        assert status["models"]["beta"]["state"] == "asleep"
        assert not lab.backends["beta"].awake
        assert lab.journal.lines() == [
            "start wake alpha", "end wake alpha",
            "start sleep alpha", "end sleep alpha", "start wake beta", "end wake beta",
            "start sleep beta", "end sleep beta",
        ]  # fmt: skip
        # Sleeping while idle is a no-op that still answers 200.
        async with daemon.client.post(daemon.url + "/admin/sleep") as response:
            assert response.status == 200
        assert lab.journal.count("start sleep beta") == 1
        # One group by name.
        async with daemon.client.post(daemon.url + "/admin/switch", json={"model": "beta"}) as r:
            assert r.status == 200
        async with daemon.client.post(
            daemon.url + "/admin/sleep", json={"group": "default"}
        ) as response:
            assert response.status == 200
        assert (await daemon.status())["state"] == "idle"
        assert lab.journal.count("end sleep beta") == 2
        async with daemon.client.post(
            daemon.url + "/admin/sleep", json={"group": "no-such-group"}
        ) as response:
            assert response.status in (400, 404)
            assert set((await response.json())["error"]) >= {"message", "type", "code"}
        # No backend was asked anything by the admin routes.
        assert alpha.requests == []
        assert lab.backends["beta"].requests == []
