"""Streaming goes through chunk by chunk, and a client that leaves frees its model."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from tests.support import Lab, running_daemon, wait_for


async def test_chunk_reaches_client_before_next_is_sent(lab: Lab) -> None:
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    async with running_daemon(lab.config()) as daemon:
        async with await daemon.chat("alpha", stream=True, chunks=4, gate="g") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            for index in range(4):
                # The backend holds chunk index+1 until we have seen chunk index: if the
                # proxy buffered anything, this read would never complete.
                line = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
                assert json.loads(line.removeprefix(b"data: ")) == {
                    "model": "alpha",
                    "index": index,
                }
                assert backend.chunks_sent == index + 1
                backend.open_gate("g", index + 1)
            assert await response.content.readuntil(b"\n\n") == b"data: [DONE]\n\n"
        switcher = daemon.mux.switchers["default"]
        await wait_for(lambda: switcher.in_flight("alpha") == 0)


async def test_client_disconnect_mid_stream_releases_the_model(lab: Lab) -> None:
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    async with running_daemon(lab.config()) as daemon:
        switcher = daemon.mux.switchers["default"]
        response = await daemon.chat("alpha", stream=True, chunks=5, gate="g")
        await response.content.readuntil(b"\n\n")
        assert switcher.in_flight("alpha") == 1
        response.close()  # the client goes away mid-stream
        await asyncio.wait_for(backend.stream_closed.wait(), 10)
        assert backend.chunks_sent == 1
        await wait_for(lambda: switcher.in_flight("alpha") == 0)
        metrics = await daemon.metrics()
        assert 'llmux_model_in_flight{model="alpha"} 0.0' in metrics
        # The answer had started: counted with the status sent, as nginx logs it (499 is
        # for a client gone before any answer).
        assert 'llmux_requests_total{model="alpha",status="200"} 1.0' in metrics
        assert 'status="499"' not in metrics


async def test_stream_drains_before_switch(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    alpha = lab.backends["alpha"]
    async with running_daemon(lab.config()) as daemon:
        switcher = daemon.mux.switchers["default"]
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="g")
        await stream.content.readuntil(b"\n\n")
        beta = asyncio.create_task(daemon.chat("beta"))
        await wait_for(lambda: switcher.model_status("alpha") == "draining")
        # Neither a new alpha request nor the switch may touch alpha while it drains.
        assert "start sleep alpha" not in lab.journal.lines()
        late_alpha = asyncio.create_task(daemon.chat("alpha"))
        await wait_for(lambda: switcher.queued("alpha") == 1)
        alpha.open_gate("g", 1)
        assert (await stream.content.read()).endswith(b"data: [DONE]\n\n")
        stream.close()
        async with await beta as response:
            assert (await response.json())["model"] == "beta"
        async with await late_alpha as response:
            assert (await response.json())["model"] == "alpha"
        lines = lab.journal.lines()
        assert lines.index("start sleep alpha") > lines.index("end wake alpha")
        lab.journal.assert_no_overlap()
    assert lab.violations() == []


async def test_drain_timeout_cuts_the_stream_and_switches(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    config = lab.config(policy="drain_timeout_secs = 0.3\n")
    async with running_daemon(config) as daemon:
        stream = await daemon.chat("alpha", stream=True, chunks=2, gate="never")
        await stream.content.readuntil(b"\n\n")
        async with await daemon.chat("beta") as response:
            assert (await response.json())["model"] == "beta"
        # The held stream was cut: the client sees an incomplete chunked body.
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(stream.content.read(), 10)
        stream.close()
        assert daemon.mux.switchers["default"].in_flight("alpha") == 0
    assert lab.violations() == []


async def test_a_client_that_closes_after_done_completed_its_stream(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    # The openai SDK closes right after `data: [DONE]`, before the backend's final empty
    # chunk: the request was complete, not an abort (it was counted 499 and logged as
    # client_disconnected).
    await lab.add_backends("alpha")
    backend = lab.backends["alpha"]
    async with running_daemon(lab.config()) as daemon:
        switcher = daemon.mux.switchers["default"]
        with caplog.at_level(logging.DEBUG, logger="aiollmux"):
            response = await daemon.chat("alpha", stream=True, chunks=1, gate="g", hold_end=True)
            body = await response.content.readuntil(b"data: [DONE]\n\n")
            assert body.endswith(b"data: [DONE]\n\n")
            response.close()  # as the SDK does, while the backend still holds its last chunk
            await asyncio.wait_for(backend.stream_closed.wait(), 10)
            await wait_for(lambda: switcher.in_flight("alpha") == 0)
        metrics = await daemon.metrics()
        assert 'llmux_requests_total{model="alpha",status="200"} 1.0' in metrics
        assert 'status="499"' not in metrics
        events = [getattr(r, "event", None) for r in caplog.records]
        assert "client_disconnected" not in events
