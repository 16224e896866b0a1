"""`aiollmux run`: load the config, listen, serve until a signal (docs/design.md §7).

SIGTERM/SIGINT: stop accepting, fail queued requests, let in-flight ones finish for
`shutdown_timeout_secs`, kill running hooks, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import replace

from aiohttp import web

from aiollmux.allocator import tune_allocator
from aiollmux.app import MULTIPLEXER, RELOADER, build_app
from aiollmux.config import Config, log_config_warnings
from aiollmux.listener import ClientLimits, LimitedSite, raise_fd_limit
from aiollmux.serverlog import ServerLogger
from aiollmux.systemd import notify

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_STATUS = 130


def make_runner(
    app: web.Application, *, shutdown_timeout: float, keepalive_timeout: float
) -> web.AppRunner:
    """The runner `run` serves with (the tests use it too). Handlers may be cancelled
    when their client goes away; request bodies are read as sent (the proxy forwards
    the original bytes, docs/design.md §4); signals are ours to handle."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        auto_decompress=False,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
        keepalive_timeout=keepalive_timeout,
        logger=ServerLogger(),  # malformed requests: one line, no headers (docs/design.md §5)
    )


def make_site(runner: web.AppRunner, config: Config) -> LimitedSite:
    """The listener of `runner`'s app, with the connection limits of docs/design.md §5. The
    timeouts and `max_connections` are read from the live config at each accept."""
    mux = runner.app[MULTIPLEXER]

    def limits() -> ClientLimits:
        live = mux.config
        return ClientLimits(
            header_timeout=live.client_header_timeout_secs,
            send_timeout=live.send_timeout_secs,
            max_connections=live.max_connections,
        )

    site = LimitedSite(runner, config.host, config.port, backlog=config.backlog, limits=limits)
    mux.on_applied.append(site.limits_changed)
    return site


async def serve(config: Config) -> None:
    """Serve `config` until SIGTERM/SIGINT: prepare → listen → wait → stop."""
    app, runner = _prepare(config)
    signals = _Signals(app)
    try:
        await _listen(app, runner, config)
        await signals.stop_requested.wait()
        logger.info(
            "shutting down: in-flight requests have %.0fs to finish",
            config.shutdown_timeout_secs,
            extra={"event": "shutting_down"},
        )
        notify("STOPPING=1")
    finally:
        await runner.cleanup()
        signals.remove()


def _prepare(config: Config) -> tuple[web.Application, web.AppRunner]:
    if tune_allocator():
        logger.debug("allocator tuned for large request bodies (aiollmux/allocator.py)")
    # Before any hook runs: a second instance must not put the first one's model to
    # sleep (adoption and sleep_on_shutdown) only to find the port taken.
    check_port_free(config.host, config.port)
    raise_fd_limit()
    app = build_app(config)
    app[MULTIPLEXER].served = False  # no sleep_on_shutdown for a daemon that never served
    runner = make_runner(
        app,
        shutdown_timeout=config.shutdown_timeout_secs,
        keepalive_timeout=config.keepalive_timeout_secs,
    )
    return app, runner


async def _listen(app: web.Application, runner: web.AppRunner, config: Config) -> None:
    mux = app[MULTIPLEXER]
    await runner.setup()  # probes alive hooks: adoption happens before we listen
    await make_site(runner, config).start()
    mux.served = True
    logger.info(
        "listening on http://%s:%d; models: %s",
        config.host,
        config.port,
        ", ".join(sorted(mux.config.models)),
        extra={"event": "listening", "host": config.host, "port": config.port},
    )
    log_config_warnings(mux.config)
    notify("READY=1")


class _Signals:
    """From the start to the end of `serve`: SIGTERM/SIGINT ask for a graceful stop, and a
    second one exits at once (uvicorn's `handle_exit`); SIGHUP reloads (its default action
    would kill the daemon and leave a running hook's processes behind; before the reloader
    runs, it is ignored)."""

    def __init__(self, app: web.Application) -> None:
        self.stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._loop.add_signal_handler(sig, self._on_exit_signal, app)
        self._loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, app)

    def _on_exit_signal(self, app: web.Application) -> None:
        if self.stop_requested.is_set():
            _exit_now(app)
        self.stop_requested.set()

    def remove(self) -> None:
        self._loop.remove_signal_handler(signal.SIGHUP)
        for sig in _SIGNALS:
            self._loop.remove_signal_handler(sig)


def check_port_free(host: str, port: int) -> None:
    """Bind (and let go of) every address `host` names on `port`, as the listener will:
    OSError ("Address already in use") if another process holds one."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def _reload_on_sighup(app: web.Application) -> None:
    if not app[RELOADER].running:
        logger.info(
            "SIGHUP ignored: not serving yet, or stopping", extra={"event": "sighup_ignored"}
        )
        return
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
