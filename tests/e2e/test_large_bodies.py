"""Multi-megabyte prompts are routed without re-encoding and reach the backend intact."""

from __future__ import annotations

import io
import json

import pytest

from aiollmux.app import TRIMMER
from tests.support import Lab, running_daemon, wait_for

LAYOUTS = ["model first", "SDK order", "model in the middle"]


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_large_prompt_is_routed_and_forwarded_byte_for_byte(lab: Lab, layout: str) -> None:
    await lab.add_backends("alpha")
    prompt = [{"role": "user", "content": '\\u00e9 "quoted" ' * 400_000}]
    layouts: dict[str, dict[str, object]] = {
        "model first": {"model": "alpha", "messages": prompt},
        "SDK order": {"messages": prompt, "model": "alpha", "stream": False},
        # Far from both ends: the one layout that needs a walk (run off the event loop).
        "model in the middle": {"messages": prompt, "model": "alpha", "tools": prompt},
    }
    body = json.dumps(layouts[layout]).encode()
    assert len(body) > 5 * 1024 * 1024
    async with (
        running_daemon(lab.config()) as daemon,
        daemon.client.post(f"{daemon.url}/v1/chat/completions", data=io.BytesIO(body)) as response,
    ):
        assert response.status == 200
        assert (await response.json())["model"] == "alpha"
    assert lab.backends["alpha"].requests[-1]["body"] == body


async def test_the_heap_kept_for_a_burst_of_large_bodies_is_given_back_after_it(
    lab: Lab,
) -> None:
    await lab.add_backends("alpha")
    body = json.dumps({"model": "alpha", "prompt": "x" * (2 * 1024 * 1024)}).encode()
    async with running_daemon(lab.config()) as daemon:
        trimmer = daemon.app[TRIMMER]
        for _ in range(3):  # one burst
            url = f"{daemon.url}/v1/completions"
            async with daemon.client.post(url, data=io.BytesIO(body)) as response:
                assert response.status == 200
        assert trimmer.trims == 0  # not while the burst may go on
        await wait_for(lambda: trimmer.trims == 1, within=10)
        async with await daemon.chat("alpha") as response:  # a small body ends no burst
            assert response.status == 200
        assert trimmer.trims == 1
