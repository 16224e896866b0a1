"""The real tier (docs/design.md §15): llama.cpp's llama-server, built from source, serving two tiny
generated models through the `llamacpp` preset and the real daemon, driven by the official
`openai` SDK. Skips where the engine is missing (fails with AIOLLMUX_REQUIRE_REAL=1)."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from aiollmux.config import load_config
from tests.real.conftest import RealLab, answered
from tests.real.engines import missing
from tests.support import Daemon, running_daemon, wait_for

pytestmark = pytest.mark.real


@pytest.fixture
def openai_module() -> Any:
    try:
        import openai
    except ImportError:
        missing("the openai package is not installed: pip install -e '.[real]'")
    return openai


async def _chat(daemon: Daemon, model: str) -> dict[str, Any]:
    async with await daemon.chat(model, max_tokens=4) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


async def test_switching_both_ways_leaves_exactly_one_server(
    real_lab: RealLab, real_daemon: Daemon
) -> None:
    a, b = real_lab.port_of("tiny-a"), real_lab.port_of("tiny-b")
    for model, port in (("tiny-a", a), ("tiny-b", b), ("tiny-a", a), ("tiny-b", b)):
        answer = await _chat(real_daemon, model)
        assert answer["model"] == model  # --alias: the response names the model id
        assert real_lab.servers() == [port]
    async with real_daemon.client.post(real_daemon.url + "/admin/sleep") as response:
        assert response.status == 200
    assert real_lab.servers() == []


def _sync_client_round(openai: Any, url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    ids = {model.id for model in client.models.list()}
    assert {"tiny-a", "tiny-b"} <= ids
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=16,
        stream=True,
    )
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {"tiny-a"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    completion = client.completions.create(model="tiny-b", prompt="Once upon", max_tokens=8)
    assert completion.model == "tiny-b"
    assert isinstance(completion.choices[0].text, str)
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[])
    assert "no-such-model" in str(caught.value)


async def test_the_openai_sdk_sync_and_async(real_daemon: Daemon, openai_module: Any) -> None:
    openai = openai_module
    # The sync client blocks: in a thread, so the daemon in this loop keeps serving.
    await asyncio.to_thread(_sync_client_round, openai, real_daemon.url)
    client = openai.AsyncOpenAI(base_url=real_daemon.url + "/v1", api_key="x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="tiny-b",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=16,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        assert {chunk.model for chunk in chunks} == {"tiny-b"}
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        # The engine's own error passes through with its status and message.
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="tiny-b", messages="not a list")
        assert caught.value.status_code == 500
        assert "Expected 'messages' to be an array" in str(caught.value)
    finally:
        await client.close()


async def test_a_cancelled_stream_frees_the_request_and_the_slot(
    real_lab: RealLab, real_daemon: Daemon, openai_module: Any
) -> None:
    client = openai_module.AsyncOpenAI(base_url=real_daemon.url + "/v1", api_key="x", max_retries=0)
    switcher = real_daemon.mux.switchers["default"]
    try:
        stream = await client.chat.completions.create(
            model="tiny-a",
            messages=[{"role": "user", "content": "Tell a long story"}],
            max_tokens=6000,  # far longer than the test waits: only a cancel ends it
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 3:
                break
        assert switcher.in_flight("tiny-a") == 1
        await stream.close()  # the client goes away mid-stream
    finally:
        await client.close()
    await wait_for(lambda: switcher.in_flight("tiny-a") == 0, within=30)
    slots_url = f"http://127.0.0.1:{real_lab.port_of('tiny-a')}/slots"

    async def slots_idle() -> bool:
        async with real_daemon.client.get(slots_url) as response:
            slots = await response.json()
        return not any(slot["is_processing"] for slot in slots)

    await answered(slots_idle)


async def test_a_server_started_by_hand_on_the_port_is_refused(real_lab: RealLab) -> None:
    config = real_lab.write_config()
    port = real_lab.port_of("tiny-a")
    # Someone starts tiny-b's weights by hand on tiny-a's port.
    intruder = await asyncio.create_subprocess_exec(
        str(real_lab.binary), "--host", "127.0.0.1", "--port", str(port),
        "-m", str(real_lab.models["tiny-b"]), "--alias", "tiny-b",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/health"

            async def healthy() -> bool:
                try:
                    async with session.get(url) as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await answered(healthy)
        async with running_daemon(config) as daemon:
            async with await daemon.chat("tiny-a", max_tokens=4) as response:
                body = await response.json()
            assert response.status == 503, body
            assert body["error"]["code"] == "wake_failed"
            assert "no llama-server started by these hooks runs" in body["error"]["message"]
            assert intruder.returncode is None  # not touched
    finally:
        intruder.kill()
        await intruder.wait()


async def test_a_missing_model_file_is_a_503_naming_it(
    real_lab: RealLab, openai_module: Any
) -> None:
    gone = real_lab.tmp / "models" / "tiny-gone.gguf"
    config = real_lab.write_config(extra_models={"tiny-gone": gone})
    async with running_daemon(config) as daemon:
        client = openai_module.AsyncOpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
        try:
            with pytest.raises(openai_module.InternalServerError) as caught:
                await client.chat.completions.create(
                    model="tiny-gone", messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            await client.close()
    assert caught.value.status_code == 503
    assert f"model file not found: {gone}" in str(caught.value)
    assert real_lab.servers() == []


def test_test_hooks_passes_on_the_preset(real_lab: RealLab) -> None:
    config = real_lab.write_config()
    wake = load_config(real_lab.config_path).models["tiny-a"].wake
    assert wake == config.models["tiny-a"].wake
    assert shlex.split(wake)[1].endswith("aiollmux/presets/llamacpp/wake.sh")
    result = subprocess.run(
        [sys.executable, "-m", "aiollmux", "test-hooks", "tiny-a", "-c",
         str(real_lab.config_path), "--request"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "LLMUX_ADMIN_TOKEN": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("tiny-a: all steps passed")
    assert "chat request            pass" in result.stdout
    assert real_lab.servers() == []
