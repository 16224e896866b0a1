"""Inputs the fuzzers (tests/fuzz/) once broke their properties with, each a test of its own."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from multidict import CIMultiDict

from aiollmux.request_body import VALIDATE_LIMIT
from tests.fuzz.support import (
    ERROR_STATUS,
    PER_MODEL,
    PROXY_PATHS,
    UPSTREAM,
    RecordingBackend,
    start_lab,
)
from tests.support import Daemon, Lab, raw_exchange, running_daemon

# -- inputs that once broke the properties (found by the fuzzers) --------------------------


@pytest.fixture
async def daemon(lab: Lab) -> AsyncIterator[Daemon]:
    await start_lab(lab)
    async with running_daemon(lab.config(top=PROXY_PATHS, per_model=PER_MODEL)) as daemon:
        yield daemon
    assert lab.violations() == []


async def assert_openai_4xx(response: aiohttp.ClientResponse) -> None:
    assert 400 <= response.status < 500, await response.text()
    assert response.content_type == "application/json", await response.text()
    assert ERROR_STATUS[(await response.json())["error"]["code"]] == response.status


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


PLAIN = b'{"model": "alpha"}'
ENCODED = [
    ("gzip", gzip.compress(PLAIN, mtime=0)),
    ("x-gzip", gzip.compress(PLAIN, mtime=0)),
    ("deflate", zlib.compress(PLAIN)),
    ("deflate", raw_deflate(PLAIN)),
    ("identity, gzip", gzip.compress(PLAIN, mtime=0)),
    ("gzip, deflate", zlib.compress(gzip.compress(PLAIN, mtime=0))),
]


@pytest.mark.parametrize(
    ("encoding", "data"),
    ENCODED,
    ids=["gzip", "x-gzip", "deflate", "raw-deflate", "identity-gzip", "gzip-deflate"],
)
async def test_encoded_request_body_is_routed_by_its_decoding_and_forwarded_as_sent(
    lab: Lab, daemon: Daemon, encoding: str, data: bytes
) -> None:
    # aiohttp's server would decompress it by default and forward the result under the
    # original Content-Encoding; the original bytes go through (docs/design.md §4).
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Backend"] == "alpha"
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].body == data
    assert dict(backend.raw[-1].headers)["Content-Encoding"] == encoding


async def test_encoded_body_of_an_upstream_model_is_rewritten_and_sent_decoded(
    lab: Lab, daemon: Daemon
) -> None:
    data = gzip.compress(b'{"model": "g", "stream": false}', mtime=0)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
    backend = lab.backends["gamma"]
    assert isinstance(backend, RecordingBackend)
    assert json.loads(backend.raw[-1].body) == {"model": UPSTREAM, "stream": False}
    assert "content-encoding" not in {k.lower() for k, _ in backend.raw[-1].headers}


BAD_ENCODINGS = [
    ("gzip", PLAIN, 400),  # not gzip data
    ("deflate", b"\x00not deflate", 400),
    ("gzip", gzip.compress(PLAIN, mtime=0) + b"trailing", 400),
    ("br", PLAIN, 400),  # not decodable here: cannot be routed
]


@pytest.mark.parametrize(
    ("encoding", "data", "status"),
    BAD_ENCODINGS,
    ids=["not-gzip", "not-deflate", "trailing-garbage", "brotli"],
)
async def test_undecodable_request_body_is_refused(
    lab: Lab, daemon: Daemon, encoding: str, data: bytes, status: int
) -> None:
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == status
        await assert_openai_4xx(response)
    assert all(not b.raw for b in lab.backends.values() if isinstance(b, RecordingBackend))


async def test_repeated_content_encoding_headers_are_one_list(lab: Lab, daemon: Daemon) -> None:
    # RFC 9110 §5.3: repeated fields are one comma-separated list, in order.
    data = gzip.compress(PLAIN, mtime=0)
    headers = CIMultiDict([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].body == data
    sent = [v for k, v in backend.raw[-1].headers if k.lower() == "content-encoding"]
    assert sent == ["identity", "gzip"]


async def test_empty_encoded_body_is_model_required(daemon: Daemon) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=b"", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "model_required"


async def test_request_body_that_decodes_past_the_limit_is_413(lab: Lab, daemon: Daemon) -> None:
    limit = daemon.mux.config.max_request_body_bytes
    bomb = gzip.compress(b" " * limit + PLAIN, mtime=0)  # a few kB on the wire
    assert len(bomb) < limit // 100
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with daemon.client.post(f"{daemon.url}/v1/x", data=bomb, headers=headers) as response:
        assert response.status == 413
        await assert_openai_4xx(response)
    assert all(not b.raw for b in lab.backends.values() if isinstance(b, RecordingBackend))


async def test_large_body_with_a_key_ending_in_an_escaped_model_is_routed_by_model(
    daemon: Daemon,
) -> None:
    # request_body._model_near_the_end once took the bytes "model" after an escaped quote
    # (inside the key `p"model`) for the top-level key "model".
    prompt = "x" * (VALIDATE_LIMIT + 1)
    data = f'{{"messages": "{prompt}", "model": "alpha", "p\\"model": "beta"}}'.encode()
    assert json.loads(data)["model"] == "alpha"
    async with daemon.client.post(f"{daemon.url}/v1/x", data=data) as response:
        assert response.status == 200
        assert response.headers["X-Backend"] == "alpha"


async def test_absolute_form_target_is_proxied(lab: Lab, daemon: Daemon) -> None:
    # RFC 9112 §3.2.2: servers must accept absolute-form. The proxy once appended
    # request.raw_path ("http://...") to "http://127.0.0.1:<port>": an invalid URL.
    body = b'{"model": "alpha"}'
    request = b"POST http://llmux.test/v1/x?a=1 HTTP/1.1\r\nHost: llmux.test\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = await raw_exchange(daemon.url, request)
    assert answer is not None
    assert answer.status == 200, answer
    backend = lab.backends["alpha"]
    assert isinstance(backend, RecordingBackend)
    assert backend.raw[-1].target == "/v1/x?a=1"


ADMIN_BAD_BODIES = [
    ("/admin/sleep", b'{"group": ["gpu0"]}', "application/json"),  # was a TypeError
    ("/admin/sleep", b'{"group": {}}', "application/json"),
    ("/admin/switch", b'{"model": "alpha", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
]


@pytest.mark.parametrize(
    ("path", "data", "content_type"),
    ADMIN_BAD_BODIES,
    ids=["list-group", "object-group", "deep-nesting"],
)
async def test_admin_body_errors_are_400(
    daemon: Daemon, path: str, data: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with daemon.client.post(daemon.url + path, data=data, headers=headers) as response:
        await assert_openai_4xx(response)


@pytest.mark.parametrize(
    ("path", "data"),
    [("/admin/switch", b'{"model": "alpha"}'), ("/admin/sleep", b"{}")],
    ids=["switch", "sleep"],
)
async def test_admin_body_charset_parameter_is_ignored(
    daemon: Daemon, path: str, data: bytes
) -> None:
    # RFC 8259 §11: application/json defines no charset parameter; an unknown one was
    # a LookupError (500). The body is JSON in any case.
    headers = {"Content-Type": "application/json; charset=nope"}
    async with daemon.client.post(daemon.url + path, data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
