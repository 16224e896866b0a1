"""LiteLLM's proxy in front of two aiollmux daemons on loopback (docs/design.md §12, §15), with the
contrib config adapted: routing by the body's model, unbuffered streaming, a switch on each
box, a failed wake surfacing with its message, and the contrib health-check and retry
settings proven not to wake models (or rerun a failed wake)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aiollmux.config import load_config
from tests.real.conftest import RealLab, answered
from tests.real.engines import REPO, missing
from tests.support import Daemon, free_port, running_daemon

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]

MASTER_KEY = "sk-litellm-test"
BOXES = {"box1": ("tiny-a", "tiny-b"), "box2": ("tiny-c", "tiny-d", "broken")}


def _litellm() -> str:
    found = os.environ.get("LITELLM_BIN") or shutil.which(
        "litellm", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if found is None:
        missing("LiteLLM's proxy is not installed: pip install -e '.[real]'")
    return found


@dataclass
class Router:
    url: str
    boxes: dict[str, Daemon]
    session: aiohttp.ClientSession

    async def chat(self, model: str, **body: Any) -> aiohttp.ClientResponse:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        return await self.session.post(
            f"{self.url}/v1/chat/completions", json=payload, headers=headers
        )


def _box_lab(lab: RealLab, box: str) -> RealLab:
    """One daemon's lab: its models are the two tiny GGUFs under other ids."""
    models = dict(zip(BOXES[box], lab.models.values(), strict=False))
    if "broken" in BOXES[box]:
        models["broken"] = lab.tmp / "missing" / "broken.gguf"
    tmp = lab.tmp / box
    tmp.mkdir()
    return RealLab(tmp, lab.binary, models)


def _router_config(tmp: Path, urls: dict[str, str]) -> Path:
    """contrib/litellm/config.yaml with its model_list pointed at the two daemons."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "contrib" / "litellm" / "config.yaml").read_text())
    template = config["model_list"][0]["litellm_params"]
    config["model_list"] = [
        {
            "model_name": model,
            "litellm_params": {
                **template,
                "model": f"openai/{model}",
                "api_base": f"{urls[box]}/v1",
                "api_key": "unused",
            },
        }
        for box, models in BOXES.items()
        for model in models
    ]
    config["general_settings"]["master_key"] = MASTER_KEY
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def router(real_lab: RealLab) -> AsyncIterator[Router]:
    litellm = _litellm()
    async with AsyncExitStack() as stack:
        boxes: dict[str, Daemon] = {}
        for box in BOXES:
            box_lab = _box_lab(real_lab, box)
            stack.callback(box_lab.cleanup)
            box_lab.write_config()
            boxes[box] = await stack.enter_async_context(
                running_daemon(load_config(box_lab.config_path))
            )
        config = _router_config(real_lab.tmp, {name: d.url for name, d in boxes.items()})
        port = free_port()
        log = stack.enter_context((real_lab.tmp / "litellm.log").open("wb"))
        process = await asyncio.create_subprocess_exec(
            litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            # No download of LiteLLM's model price list at start: the tier runs offline.
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )  # fmt: skip
        session = await stack.enter_async_context(aiohttp.ClientSession())
        url = f"http://127.0.0.1:{port}"

        async def alive() -> bool:
            if process.returncode is not None:
                raise AssertionError((real_lab.tmp / "litellm.log").read_text()[-3000:])
            try:
                async with session.get(url + "/health/liveliness") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        try:
            await answered(alive, within=120)
            yield Router(url, boxes, session)
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def _active(box: Daemon) -> str | None:
    status = await box.status()
    active: str | None = status["active_model"]
    return active


def _count(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in metrics.splitlines():
        if line.startswith(f"{name}{{") and all(p in line for p in wanted.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_litellm_routes_streams_switches_and_reports_failed_wakes(router: Router) -> None:
    box1, box2 = router.boxes["box1"], router.boxes["box2"]
    # LiteLLM started with the contrib settings: its start woke nothing on either box.
    for probe in ("/health/liveliness", "/health/readiness"):
        async with router.session.get(router.url + probe) as response:
            assert response.status == 200, probe
    assert await _active(box1) is None
    assert await _active(box2) is None

    # Routing by the body's model: each model on its own box.
    for model, box in (("tiny-a", box1), ("tiny-c", box2)):
        async with await router.chat(model, max_tokens=4) as response:
            body = await response.json()
            assert response.status == 200, body
        assert body["choices"][0]["message"]["content"] is not None
        assert await _active(box) == model

    # A switch on each box.
    for model, box in (("tiny-b", box1), ("tiny-d", box2)):
        async with await router.chat(model, max_tokens=4) as response:
            assert response.status == 200, await response.text()
        assert await _active(box) == model

    # Streaming is not buffered: the first chunk arrives while box1 still generates.
    switcher = box1.mux.switchers["default"]
    long = {"max_tokens": 6000, "stream": True, "ignore_eos": True}
    async with await router.chat("tiny-b", **long) as response:
        assert response.status == 200
        first = await response.content.readline()
        while not first.startswith(b"data: "):
            first = await response.content.readline()
        assert switcher.in_flight("tiny-b") == 1
    # The router let go: box1's request ends too.
    await answered(_drained(switcher, "tiny-b"))

    # A failed wake surfaces with its message, once: num_retries 0 does not rerun it.
    async with await router.chat("broken", max_tokens=4) as response:
        text = await response.text()
    assert response.status >= 500, text
    assert "ServiceUnavailableError" in text  # the box's 503, as LiteLLM names it
    assert "wake failed" in text
    assert "model file not found" in text  # the hook's line (LiteLLM cuts it short after)
    metrics = await box2.metrics()
    assert _count(metrics, "llmux_hook_failures_total", model="broken", hook="wake") == 1.0

    # Through all of it, no health check woke a model nobody asked for.
    for box, asked in ((box1, ("tiny-a", "tiny-b")), (box2, ("tiny-c", "tiny-d", "broken"))):
        metrics = await box.metrics()
        for model in asked:
            woken = _count(metrics, "llmux_hook_duration_seconds_count", model=model, hook="wake")
            assert woken == 1.0, (model, woken)


def _drained(switcher: Any, model: str) -> Any:
    async def check() -> bool:
        return bool(switcher.in_flight(model) == 0)

    return check
