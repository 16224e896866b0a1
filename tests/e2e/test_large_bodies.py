"""Multi-megabyte prompts are routed without re-encoding and reach the backend intact."""

from __future__ import annotations

import io
import json

import pytest

from tests.support import Lab, running_daemon


@pytest.mark.parametrize("model_first", [True, False])
async def test_large_prompt_is_routed_and_forwarded_byte_for_byte(
    lab: Lab, model_first: bool
) -> None:
    await lab.add_backends("alpha")
    prompt = [{"role": "user", "content": '\\u00e9 "quoted" ' * 400_000}]
    document: dict[str, object] = {"model": "alpha", "messages": prompt}
    if not model_first:
        document = {"messages": prompt, "model": "alpha", "stream": False}
    body = json.dumps(document).encode()
    assert len(body) > 5 * 1024 * 1024  # past the size scanned off the event loop
    async with (
        running_daemon(lab.config()) as daemon,
        daemon.client.post(f"{daemon.url}/v1/chat/completions", data=io.BytesIO(body)) as response,
    ):
        assert response.status == 200
        assert (await response.json())["model"] == "alpha"
    assert lab.backends["alpha"].requests[-1]["body"] == body
