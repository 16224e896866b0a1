"""The `aiollmux` command line: a thin click layer over typed functions (DESIGN §11)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import NoReturn

import click
import tomli_w

from aiollmux import __version__
from aiollmux.config import DEFAULT_PATH, Config, hook_warnings, load_config
from aiollmux.errors import ConfigError
from aiollmux.logs import LogFormat, configure_logging
from aiollmux.policy import load_policy
from aiollmux.starter import starter_document

CONFIG_ENV = "LLMUX_CONFIG"


def _fail_config(error: ConfigError) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _load(path: str) -> Config:
    try:
        config = load_config(path)
        load_policy(config.policy, config.source)
    except ConfigError as error:
        _fail_config(error)
    return config


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    default=DEFAULT_PATH,
    show_default=True,
    type=click.Path(dir_okay=False),
    help=f"Configuration file (or ${CONFIG_ENV}).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aiollmux")
def main() -> None:
    """One OpenAI-compatible endpoint for many local LLMs, switched through your hooks."""


@main.command()
@config_option
@click.option("--host", help="Listen address (overrides the config).")
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="Listen port (overrides).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (hook output too).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def run(
    config_path: str, host: str | None, port: int | None, verbose: bool, log_format: LogFormat
) -> None:
    """Run the daemon."""
    from aiollmux.server import run as run_server

    configure_logging(verbose=verbose, fmt=log_format)
    config = _load(config_path)
    if port is not None and any(m.port == port for m in config.models.values()):
        _fail_config(ConfigError(config.source, "--port", f"port {port} is a model's port"))
    try:
        run_server(config, host=host, port=port)
    except ConfigError as error:
        _fail_config(error)
    except OSError as error:
        click.echo(f"error: cannot listen: {error.strerror or error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally wins
        pass


@main.command()
@config_option
def check(config_path: str) -> None:
    """Validate the configuration and print a summary (exit 0 if valid, 2 if not)."""
    config = _load(config_path)
    click.echo(f"{config.source}: OK")
    click.echo(f"  listen: http://{config.host}:{config.port}")
    click.echo(f"  policy: {config.policy.name}")
    for model in sorted(config.models.values(), key=lambda m: m.id):
        aliases = f" (aliases: {', '.join(model.aliases)})" if model.aliases else ""
        group = f" [group {model.group}]" if model.group != "default" else ""
        click.echo(f"  model {model.id}: port {model.port}{group}{aliases}")
    for warning in hook_warnings(config):
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.argument("path", default=DEFAULT_PATH, type=click.Path(dir_okay=False))
def init(path: str) -> None:
    """Write a starter configuration (two demo models) to PATH; never overwrites."""
    target = Path(path)
    try:
        with target.open("xb") as file:
            tomli_w.dump(starter_document(), file)
    except FileExistsError:
        click.echo(f"error: {target} already exists; not overwriting it", err=True)
        sys.exit(1)
    except OSError as error:
        click.echo(f"error: cannot write {target}: {error.strerror}", err=True)
        sys.exit(1)
    click.echo(f"wrote {target}; check it with `aiollmux check -c {target}`")


def _default_pidfile(port: int) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / f"aiollmux-demo-{os.getuid()}" / f"{port}.pid"


@main.command("demo-backend")
@click.option("--port", type=click.IntRange(1, 65535), envvar="LLMUX_PORT", required=True)
@click.option("--model", envvar="LLMUX_MODEL", default="demo", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--token-delay", type=click.FloatRange(min=0), default=0.02, show_default=True)
@click.option(
    "--load-secs",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pretend to load weights for this long before listening.",
)
@click.option(
    "--pidfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pidfile for --detach/--stop/--check (default: a runtime dir, by port).",
)
@click.option(
    "--detach",
    "action",
    flag_value="detach",
    help="Start in the background; return once it accepts connections (a wake hook).",
)
@click.option(
    "--stop",
    "action",
    flag_value="stop",
    help="Stop the pidfile's backend and wait until it is gone (a sleep hook).",
)
@click.option(
    "--check", "action", flag_value="check", help="Exit 0 if it runs and answers (an alive hook)."
)
@click.option("--ready-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True)
def demo_backend(
    port: int,
    model: str,
    host: str,
    token_delay: float,
    load_secs: float,
    pidfile: Path | None,
    action: str | None,
    ready_timeout: float,
) -> None:
    """A fake OpenAI-compatible model server that streams tokens (no GPU needed)."""
    from aiollmux import demo_backend as demo

    settings = demo.DemoSettings(
        model=model, port=port, host=host, token_delay=token_delay, load_secs=load_secs
    )
    pidfile = pidfile or _default_pidfile(port)
    try:
        if action == "detach":
            pid = demo.detach(settings, pidfile, ready_timeout)
            click.echo(f"demo backend {model!r} running on port {port} (pid {pid})")
        elif action == "stop":
            demo.stop(pidfile)
        elif action == "check":
            demo.check(settings, pidfile)
        else:
            asyncio.run(demo.serve_demo(settings))
    except demo.DemoControlError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
