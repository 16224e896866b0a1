"""`aiollmux run`: load the config, listen, serve until a signal (DESIGN §7)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace

from aiohttp import web

from aiollmux.app import MULTIPLEXER, build_app
from aiollmux.config import Config

logger = logging.getLogger(__name__)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Serve `config` until SIGTERM/SIGINT (or cancellation)."""
    app = build_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=config.shutdown_timeout_secs,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
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
        if ready is not None:
            ready.set()
        await stop.wait()
        logger.info("shutting down", extra={"event": "shutting_down"})
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    if host is not None:
        config = replace(config, host=host)
    if port is not None:
        config = replace(config, port=port)
    asyncio.run(serve(config))
