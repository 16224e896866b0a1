"""Failures end in bounded, OpenAI-shaped errors and leave the switcher consistent."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time

import pytest

from aiollmux.switcher import BACKOFF_SECS
from tests.support import Lab, free_port, gated_wake, process_gone, running_daemon, wait_for


async def test_wake_failure_is_503_then_retried_after_backoff(lab: Lab) -> None:
    await lab.add_backends("alpha")
    flag = lab.tmp / "fail-once"
    flag.touch()
    hooks = {
        "alpha": {
            "wake": f'if [ -e {flag} ]; then rm {flag}; echo "out of memory" >&2; exit 3; fi; '
            f"touch {lab.state_dir}/alpha.awake",
        }
    }
    async with running_daemon(lab.config(hooks=hooks)) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 503
            error = (await response.json())["error"]
            assert error["code"] == "wake_failed"
            assert "out of memory" in error["message"]
            assert "status 3" in error["message"]
        switcher = daemon.mux.switchers["default"]
        assert switcher.state() == "idle"
        failed_at = time.monotonic()
        # The clean-up sleep hook ran after the failed wake.
        assert lab.journal.lines() == ["start sleep alpha", "end sleep alpha"]
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        assert time.monotonic() - failed_at >= BACKOFF_SECS - 0.1
        metrics = await daemon.metrics()
        assert 'llmux_switch_total{from="idle",result="failure",to="alpha"} 1.0' in metrics
        assert 'llmux_hook_failures_total{hook="wake",model="alpha"} 1.0' in metrics


async def test_hanging_wake_hook_is_killed_with_its_children(lab: Lab) -> None:
    await lab.add_backends("alpha")
    pidfile = lab.tmp / "child.pid"
    hooks = {"alpha": {"wake": f"sleep 1000 & echo $! > {pidfile}; wait"}}
    config = lab.config(hooks=hooks, per_model={"alpha": {"wake_timeout_secs": 0.5}})
    async with running_daemon(config) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 503
            assert "timed out" in (await response.json())["error"]["message"]
        child = int(pidfile.read_text())
        await wait_for(lambda: process_gone(child))
        metrics = await daemon.metrics()
        assert 'llmux_hook_timeouts_total{hook="wake",model="alpha"} 1.0' in metrics


async def test_request_timeout_is_504(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    await lab.add_backends("alpha")
    go, wake = gated_wake(lab.tmp, lab.state_dir, "alpha")
    hooks = {"alpha": {"wake": wake}}
    config = lab.config(hooks=hooks, policy="request_timeout_secs = 0.3\n")
    async with running_daemon(config) as daemon:
        with caplog.at_level(logging.INFO, logger="aiollmux"):
            async with await daemon.chat("alpha") as response:
                assert response.status == 504
                assert (await response.json())["error"]["code"] == "model_timeout"
        assert any(getattr(r, "event", None) == "request_timeout" for r in caplog.records)
        switcher = daemon.mux.switchers["default"]
        assert switcher.queued("alpha") == 0
        go.touch()
        await wait_for(lambda: switcher.active == "alpha")
        async with await daemon.chat("alpha") as response:
            assert response.status == 200


async def test_backend_port_closed_is_502(lab: Lab) -> None:
    async with running_daemon(lab.config(ports={"ghost": free_port()})) as daemon:
        async with await daemon.chat("ghost") as response:
            assert response.status == 502
            error = (await response.json())["error"]
            assert error["code"] == "backend_error"
            assert error["type"] == "server_error"
        assert daemon.mux.switchers["default"].in_flight("ghost") == 0


async def test_queue_bound_gives_503_with_retry_after(lab: Lab) -> None:
    await lab.add_backends("alpha")
    go, wake = gated_wake(lab.tmp, lab.state_dir, "alpha")
    hooks = {"alpha": {"wake": wake}}
    config = lab.config(hooks=hooks, policy="max_queued_requests = 2\n")
    async with running_daemon(config) as daemon:
        switcher = daemon.mux.switchers["default"]
        queued = [asyncio.create_task(daemon.chat("alpha")) for _ in range(2)]
        await wait_for(lambda: switcher.queued("alpha") == 2)
        async with await daemon.chat("alpha") as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "queue_full"
            assert int(response.headers["Retry-After"]) >= 1
        go.touch()
        for task in queued:
            async with await task as response:
                assert response.status == 200


async def test_client_leaving_the_queue_is_forgotten(lab: Lab) -> None:
    await lab.add_backends("alpha")
    go, wake = gated_wake(lab.tmp, lab.state_dir, "alpha")
    hooks = {"alpha": {"wake": wake}}
    async with running_daemon(lab.config(hooks=hooks)) as daemon:
        switcher = daemon.mux.switchers["default"]
        waiting = asyncio.create_task(daemon.chat("alpha"))
        await wait_for(lambda: switcher.queued("alpha") == 1)
        waiting.cancel()  # the client closes its connection while queued
        await wait_for(lambda: switcher.queued("alpha") == 0)
        go.touch()
        await wait_for(lambda: switcher.active == "alpha")
        assert switcher.in_flight("alpha") == 0
        metrics = await daemon.metrics()
        assert 'llmux_request_queue_depth{model="alpha"} 0.0' in metrics


async def test_min_active_secs_holds_the_model(lab: Lab) -> None:
    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config(policy="min_active_secs = 0.5\n")) as daemon:
        async with await daemon.chat("alpha") as response:
            assert response.status == 200
        switcher = daemon.mux.switchers["default"]
        activated = switcher.activated_at
        async with await daemon.chat("beta") as response:
            assert response.status == 200
        sleep_started = _journal_index(lab, "start sleep alpha")
        assert sleep_started >= 0
        assert switcher.activated_at - activated >= 0.5


def _journal_index(lab: Lab, line: str) -> int:
    lines = lab.journal.lines()
    return lines.index(line) if line in lines else -1


async def test_sleep_hook_failure_is_logged_and_switch_goes_on(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await lab.add_backends("alpha", "beta")
    hooks = {"alpha": {"sleep": f"rm -f {lab.state_dir}/alpha.awake; echo stuck >&2; exit 1"}}
    async with running_daemon(lab.config(hooks=hooks)) as daemon:
        with caplog.at_level(logging.INFO, logger="aiollmux"):
            for model in ("alpha", "beta"):
                async with await daemon.chat(model) as response:
                    assert (await response.json())["model"] == model
        assert any(getattr(r, "event", None) == "sleep_hook_failed" for r in caplog.records)
    assert lab.violations() == []


def test_pid_helper_tells_a_live_process_from_a_reaped_one() -> None:
    assert not process_gone(os.getpid())
    child = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    assert process_gone(int(child.stdout))  # exited and reaped
