"""Small backend replies (a known length up to `SMALL_REPLY`) are read whole and answered
in one write (issue 12): what the client gets, whole or as an error, never half."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from aiollmux.proxy import SMALL_REPLY
from tests.support import Lab, raw_backend, raw_exchange, running_daemon


async def test_a_small_reply_cut_by_the_backend_is_a_502_not_half_a_200(lab: Lab) -> None:
    def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b'Content-Length: 100\r\n\r\n{"choices": [')  # then the backend dies

    config = lab.config
    async with raw_backend(half) as port, running_daemon(config(ports={"cut": port})) as daemon:
        async with await daemon.chat("cut") as response:
            assert response.status == 502
            error = (await response.json())["error"]
            assert error["code"] == "backend_error"
        assert daemon.mux.switchers["default"].in_flight("cut") == 0
        assert 'llmux_requests_total{model="cut",status="502"} 1.0' in await daemon.metrics()


async def test_a_small_reply_passes_as_it_came(lab: Lab) -> None:
    # The backend's status, reason, headers and length are kept; a reply at the limit
    # takes the same path.
    body = b"x" * SMALL_REPLY

    def whole(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 201 Made\r\nX-Backend: raw\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    config = lab.config
    async with raw_backend(whole) as port, running_daemon(config(ports={"raw": port})) as daemon:
        async with await daemon.chat("raw") as response:
            assert response.status == 201
            assert response.reason == "Made"
            assert response.headers["X-Backend"] == "raw"
            assert response.headers["Content-Length"] == str(len(body))
            assert await response.read() == body
        assert 'llmux_requests_total{model="raw",status="201"} 1.0' in await daemon.metrics()


async def test_a_drain_timeout_cutting_a_small_reply_is_no_backend_error(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # the rest: later

    await lab.add_backends("beta")
    sent, hold = asyncio.Event(), asyncio.Event()
    caplog.set_level(logging.INFO, logger="aiollmux")
    async with raw_backend(half, sent=sent, hold=hold) as port:
        config = lab.config(policy="drain_timeout_secs = 0.3", ports={"slow": port})
        async with running_daemon(config) as daemon:
            slow = asyncio.ensure_future(daemon.chat("slow"))
            async with asyncio.timeout(10):
                await sent.wait()
            async with await daemon.chat("beta") as response:  # drains slow: cut at 0.3 s
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectionError):
                await slow  # the client's connection was closed, with nothing sent
            metrics = await daemon.metrics()
            hold.set()
    events = [record.__dict__.get("event") for record in caplog.records]
    assert "drain_timeout" in events
    assert "backend_error" not in events  # the backend did not fail; nor is it re-checked
    assert 'llmux_requests_total{model="slow",status="499"} 1.0' in metrics


@pytest.mark.parametrize(
    ("lengths", "size"),
    [
        (b"Content-Length: 2, 2\r\n", 2),  # a small reply
        (b"Content-Length: 2\r\nContent-Length: 2\r\n", 2),
        (b"Content-Length: 70000, 70000\r\n", 70_000),  # streamed (over SMALL_REPLY)
        (b"Content-Length: 70000\r\nContent-Length: 70000\r\n", 70_000),
    ],
)
async def test_the_length_reaches_the_client_said_once(lab: Lab, lengths: bytes, size: int) -> None:
    """Repeated Content-Length values that agree are one length (RFC 9110 §8.6): the
    client is told it once, as a number (clients refuse a list or a repeated field)."""
    body = b"y" * size

    def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + lengths)
        writer.write(b"\r\n" + body)

    config = lab.config
    async with raw_backend(reply) as port, running_daemon(config(ports={"dup": port})) as daemon:
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 15\r\nConnection: close\r\n\r\n{"model":"dup"}'
        )
        answer = await raw_exchange(daemon.url, request)
        assert answer is not None
        assert answer.status == 200
        assert answer.headers.getall("Content-Length") == [str(size)]
        assert answer.body == body
