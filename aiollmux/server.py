"""`aiollmux run`: load the config, listen, serve until a signal (DESIGN §7).

SIGTERM/SIGINT: stop accepting, fail queued requests, let in-flight ones finish for
`shutdown_timeout_secs`, kill running hooks, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import replace

from aiohttp import web

from aiollmux.app import MULTIPLEXER, RELOADER, build_app
from aiollmux.config import Config, log_config_warnings
from aiollmux.memory import tune_allocator
from aiollmux.systemd import notify

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_STATUS = 130


def make_runner(app: web.Application, *, shutdown_timeout: float) -> web.AppRunner:
    """The runner `run` serves with (the tests use it too). Handlers may be cancelled
    when their client goes away; request bodies are read as sent (the proxy forwards
    the original bytes, DESIGN §4); signals are ours to handle."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        auto_decompress=False,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )


async def serve(config: Config) -> None:
    """Serve `config` until SIGTERM/SIGINT."""
    if tune_allocator():
        logger.debug("allocator tuned for large request bodies (aiollmux/memory.py)")
    app = build_app(config)
    runner = make_runner(app, shutdown_timeout=config.shutdown_timeout_secs)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # probes alive hooks: adoption happens before we listen
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
        models = ", ".join(sorted(app[MULTIPLEXER].config.models))
        logger.info(
            "listening on http://%s:%d; models: %s",
            config.host,
            config.port,
            models,
            extra={"event": "listening", "host": config.host, "port": config.port},
        )
        log_config_warnings(app[MULTIPLEXER].config)
        loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, app)
        notify("READY=1")
        await stop.wait()
        logger.info(
            "shutting down: in-flight requests have %.0fs to finish",
            config.shutdown_timeout_secs,
            extra={"event": "shutting_down"},
        )
        notify("STOPPING=1")
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, _exit_now, app)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


def _reload_on_sighup(app: web.Application) -> None:
    # MONOTONIC_USEC: systemd >= 253 wants it with RELOADING=1 (Type=notify-reload).
    notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    done = app[RELOADER].trigger("SIGHUP")
    done.add_done_callback(lambda _: notify("READY=1"))


def _exit_now(app: web.Application) -> None:
    """The second signal: kill every hook process group and leave without waiting."""
    logger.warning("second signal: exiting now", extra={"event": "forced_exit"})
    app[MULTIPLEXER].hooks.kill_all()
    logging.shutdown()
    os._exit(FORCED_EXIT_STATUS)


def run(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    if host is not None:
        config = replace(config, host=host)
    if port is not None:
        config = replace(config, port=port)
    asyncio.run(serve(config))
