"""The `aiollmux` command line: a thin click layer over typed functions (docs/design.md §11).

Heavy modules (aiohttp, asyncio, the server) are imported inside the commands that need
them: `demo-backend --check/--stop/--detach` run as hooks on every switch and must start
fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from aiollmux import __version__
from aiollmux.config import DEFAULT_PATH, Config, config_warnings, defaults, load_config
from aiollmux.errors import ConfigError

if TYPE_CHECKING:
    from aiollmux.logs import LogFormat
    from aiollmux.tools.admin_client import AdminClient
    from aiollmux.tools.demo_control import DemoSettings

CONFIG_ENV = "LLMUX_CONFIG"
INIT_PRESET_HEADER = (
    "# aiollmux configuration written by `aiollmux init --preset {name}`: two models whose\n"
    "# hooks are the {name} preset's. Set each model's [env] (settings: `aiollmux presets`),\n"
    "# then try its hooks with `aiollmux test-hooks MODEL` before going live.\n\n"
)
INIT_HEADER = (
    b"# aiollmux configuration written by `aiollmux init`: two demo models that need no GPU.\n"
    b"# Replace their hooks with your own to serve real models (docs/configuration.md).\n\n"
)


def _fail_config(error: ConfigError) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _reason(error: OSError) -> str:
    """The plain OS message ("Address already in use"), not asyncio's wordy wrapper."""
    if error.errno is not None and error.errno > 0:  # getaddrinfo's codes are negative
        return os.strerror(error.errno)
    return error.strerror or str(error)


def _load(path: str) -> Config:
    from aiollmux.policy import load_policy

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
    from aiollmux.logs import configure_logging
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
        where = f"{host or config.host}:{port or config.port}"
        click.echo(f"error: cannot listen on {where}: {_reason(error)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally wins
        pass


@main.command()
@config_option
@click.option(
    "--settings",
    "show_settings",
    is_flag=True,
    help="Also print every setting in force, marking those left at their defaults.",
)
def check(config_path: str, show_settings: bool) -> None:
    """Validate the configuration and print a summary (exit 0 if valid, 2 if not)."""
    config = _load(config_path)
    click.echo(f"{config.source}: OK")
    click.echo(f"  listen: http://{config.host}:{config.port}")
    click.echo(f"  policy: {config.policy.name}")
    for model in sorted(config.models.values(), key=lambda m: m.id):
        aliases = f" (aliases: {', '.join(model.aliases)})" if model.aliases else ""
        group = f" [group {model.group}]" if model.group != "default" else ""
        preset = f" (preset {model.preset})" if model.preset else ""
        click.echo(f"  model {model.id}: port {model.port}{group}{preset}{aliases}")
    if show_settings:
        from aiollmux.config_settings import settings_lines

        click.echo("settings:")
        for line in settings_lines(config):
            click.echo(f"  {line}")
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}", err=True)


def _preset_names() -> list[str]:
    from aiollmux import presets

    return sorted(presets.available())


@main.command()
@click.argument("path", default=DEFAULT_PATH, type=click.Path(dir_okay=False))
@click.option(
    "--preset",
    "preset_name",
    metavar="NAME",
    help="Two models using this hook preset instead of the demo models (`aiollmux presets`).",
)
def init(path: str, preset_name: str | None) -> None:
    """Write a starter configuration (two demo models) to PATH; never overwrites."""
    import tomli_w

    from aiollmux import presets
    from aiollmux.tools.starter import preset_document, starter_document

    header, document = INIT_HEADER, starter_document()
    if preset_name is not None:
        preset = presets.get(preset_name)
        if preset is None:
            known = ", ".join(_preset_names())
            click.echo(f"error: unknown preset {preset_name!r}: expected one of {known}", err=True)
            sys.exit(2)
        header = INIT_PRESET_HEADER.format(name=preset.name).encode()
        document = preset_document(preset)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a directory should be, no permission...
        click.echo(f"error: cannot create {target.parent}: {error.strerror or error}", err=True)
        sys.exit(1)
    try:
        with target.open("xb") as file:
            file.write(header)
            tomli_w.dump(document, file)
    except FileExistsError:
        click.echo(f"error: {target} already exists; not overwriting it", err=True)
        sys.exit(1)
    except OSError as error:
        click.echo(f"error: cannot write {target}: {error.strerror or error}", err=True)
        sys.exit(1)
    click.echo(f"wrote {target}; check it with `aiollmux check -c {target}`")


@main.command("presets")
def presets_command() -> None:
    """List the hook presets and their settings (set them in [models.ID.env])."""
    from aiollmux import presets

    for preset in presets.available().values():
        click.echo(f"{preset.name}: {preset.description}")
        width = max(len(setting.name) for setting in preset.settings)
        for setting in preset.settings:
            default = f" (default: {setting.default})" if setting.default else ""
            click.echo(f"  {setting.name:<{width}}  {setting.description}{default}")
        if preset.proxy_paths:
            click.echo(f"  native paths: {', '.join(preset.proxy_paths)}")
        click.echo("")
    click.echo('Use one with `preset = "NAME"` on a model; write a starter with')
    click.echo("`aiollmux init --preset NAME`. Scripts: " + str(presets.PRESETS_DIR))


@main.command("test-hooks")
@click.argument("model")
@config_option
@click.option("--request", is_flag=True, help="Also send the backend one tiny chat request.")
@click.option(
    "--server-stays",
    is_flag=True,
    help="The engine's sleep keeps its server answering (the port is not checked).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON (for scripts).")
def test_hooks(
    model: str, config_path: str, request: bool, server_stays: bool, as_json: bool
) -> None:
    """Try MODEL's hooks before going live: wake, sleep, alive, twice (exit 0 if all pass)."""
    import asyncio

    from aiollmux.hook_check import RefusedError, check_hooks, refuse_if_daemon_has_it_awake

    config = _load(config_path)
    target = config.resolve(model)
    if target is None:
        known = ", ".join(sorted(config.models))
        click.echo(f"error: no model {model!r} in {config.source} (models: {known})", err=True)
        sys.exit(2)
    token = os.environ.get("LLMUX_ADMIN_TOKEN") or None
    try:
        asyncio.run(refuse_if_daemon_has_it_awake(config, target.id, token))
    except RefusedError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if not as_json:
        preset = f", preset {target.preset}" if target.preset else ""
        click.echo(f"testing the hooks of {target.id} (port {target.port}{preset})...", err=True)
    report = asyncio.run(check_hooks(config, target, request=request, server_stays=server_stays))
    click.echo(json.dumps(report.as_json(), indent=2) if as_json else report.render())
    sys.exit(0 if report.ok else 1)


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
@click.option("--ready-fd", type=int, hidden=True, help="Write a line here once listening.")
def demo_backend(
    port: int,
    model: str,
    host: str,
    token_delay: float,
    load_secs: float,
    pidfile: Path | None,
    action: str | None,
    ready_timeout: float,
    ready_fd: int | None,
) -> None:
    """A fake OpenAI-compatible model server that streams tokens (no GPU needed)."""
    from aiollmux.tools import demo_control as control

    settings = control.DemoSettings(
        model=model, port=port, host=host, token_delay=token_delay, load_secs=load_secs
    )
    pidfile = pidfile or control.default_pidfile(port)
    try:
        if action == "detach":
            pid = control.detach(settings, pidfile, ready_timeout)
            click.echo(f"demo backend {model!r} running on port {port} (pid {pid})")
        elif action == "stop":
            control.stop(pidfile)
        elif action == "check":
            control.check(settings, pidfile)
        else:
            _serve_demo(settings, ready_fd)
    except control.DemoControlError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def _serve_demo(settings: DemoSettings, ready_fd: int | None) -> None:
    import asyncio

    from aiollmux.tools.demo_backend import serve_demo

    try:
        asyncio.run(serve_demo(settings, ready_fd=ready_fd))
    except OSError as error:
        where = f"{settings.host}:{settings.port}"
        click.echo(f"error: cannot listen on {where}: {_reason(error)}", err=True)
        sys.exit(1)


# -- admin API clients ----------------------------------------------------------------

url_option = click.option(
    "--url",
    envvar="LLMUX_URL",
    default="http://{host}:{port}".format_map(defaults(Config)),
    show_default=True,
    help="Where aiollmux listens (or $LLMUX_URL); the token comes from $LLMUX_ADMIN_TOKEN.",
)


def _client(url: str) -> AdminClient:
    from aiollmux.tools.admin_client import AdminClient

    return AdminClient(url, os.environ.get("LLMUX_ADMIN_TOKEN") or None)


def _admin(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    from aiollmux.tools.admin_client import AdminError, run_sync

    try:
        result: dict[str, Any] = run_sync(coroutine)
    except AdminError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    return result


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON (for scripts).")
@click.option("--watch", is_flag=True, help="Redraw the table on each change (Ctrl-C to stop).")
def status(url: str, as_json: bool, watch: bool) -> None:
    """Show the daemon's state: active model, in-flight and queued requests, costs."""
    from aiollmux.tools.admin_client import render_status

    if watch:
        _follow(_client(url).watch_status(sys.stdout, clear_screen=sys.stdout.isatty()))
        return
    answer = _admin(_client(url).status())
    click.echo(json.dumps(answer, indent=2) if as_json else render_status(answer))


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print each event's JSON object.")
def events(url: str, as_json: bool) -> None:
    """Follow the daemon's events, one line each (Ctrl-C to stop)."""
    _follow(_client(url).print_events(sys.stdout, as_json=as_json))


def _follow(coroutine: Coroutine[Any, Any, None]) -> None:
    from aiollmux.tools.admin_client import AdminError, run_sync

    try:
        run_sync(coroutine)
    except AdminError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo("the daemon ended the event stream (it stopped or restarted)", err=True)


@main.command()
@url_option
@click.argument("model")
def switch(url: str, model: str) -> None:
    """Make MODEL the active model now (bypassing the policy)."""
    click.echo(f"switching to {model}...", err=True)
    answer = _admin(_client(url).act("/admin/switch", {"model": model}, sys.stderr))
    click.echo(f"{answer.get('active_model', model)} is active")


@main.command()
@url_option
@click.option("--group", help="Only this GPU group (default: every group).")
@click.option("--model", help="Only this model (the others of its group stay awake).")
def sleep(url: str, group: str | None, model: str | None) -> None:
    """Drain and put the active model(s) to sleep."""
    if group and model:
        raise click.UsageError("give --group or --model, not both")
    if model:
        click.echo(f"putting {model} to sleep...", err=True)
        _admin(_client(url).act("/admin/sleep", {"model": model}, sys.stderr))
        click.echo(f"{model} is asleep")
        return
    click.echo("putting the active model to sleep...", err=True)
    body = {"group": group} if group else {}
    _admin(_client(url).act("/admin/sleep", body, sys.stderr))
    click.echo("idle")


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
def migrate(source: Path, output: Path | None) -> None:
    """Convert an llmux YAML/JSON config to aiollmux TOML (stdout without -o)."""
    from aiollmux.tools.migrate import migrate as convert

    try:
        text, warnings = convert(source)
    except ConfigError as error:
        _fail_config(error)
    for warning in warnings:
        click.echo(f"warning: {source}: {warning}", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with output.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        click.echo(f"error: {output} already exists; not overwriting it", err=True)
        sys.exit(1)
    click.echo(f"wrote {output}; check it with `aiollmux check -c {output}`", err=True)


# -- simulate (docs/design.md §9, docs/policies.md) -------------------------------------------


@main.command()
@click.option(
    "-w",
    "--workload",
    type=click.Choice(["bursty", "poisson", "chat", "batch"]),
    default="bursty",
    show_default=True,
    help="A synthetic workload (its knobs: --param).",
)
@click.option(
    "--trace",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Replay JSON lines {"time": s, "model": id, "service": s} instead.',
)
@click.option(
    "-m",
    "--models",
    type=click.IntRange(1, 26),
    default=2,
    show_default=True,
    help="Models of a generated workload (m1, m2, ...).",
)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A workload knob.")
@click.option(
    "--switch-cost",
    "switch_costs",
    multiple=True,
    metavar="SECS|FROM:TO=SECS",
    help="Sleep + wake seconds: for every switch, or one pair (FROM may be idle or *).",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="NAME",
    help="A policy to simulate (repeatable; default: fifo and cost-aware).",
)
@click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="A [policy] knob for all."
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Start from this configuration's [policy] knobs.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Requests a backend serves at once (0: no limit).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the workload.")
@click.option(
    "--memory-gb",
    type=click.FloatRange(min=0, min_open=True),
    help="A memory budget: models stay awake together while their --size fit in it.",
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    metavar="MODEL=GB",
    help="A model's memory_gb (with --memory-gb: one for every model).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Also write the results as CSV (- : instead of the text).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Also write the results as JSON (- : instead of the text).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Print docs/policies.md's table: fifo vs cost-aware on 3 workloads, 2 and 3"
    " models, switch costs of 2, 10 and 60 s (with --seed, --concurrency, --set).",
)
@click.option(
    "--svg",
    "svg_path",
    type=click.Path(dir_okay=False),
    help="With --compare: also draw it (wait p99 against serving share) to this SVG file.",
)
def simulate(**options: Any) -> None:
    """Replay a workload through switch policies in virtual time and compare them."""
    from aiollmux.simulate.command import Options, UsageError, execute
    from aiollmux.simulate.engine import SimulationError

    try:
        output = execute(Options(**options))
    except ConfigError as error:
        _fail_config(error)
    except (UsageError, SimulationError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    for path, content in output.files.items():
        try:
            Path(path).write_text(content, encoding="utf-8")
        except OSError as error:
            click.echo(f"error: cannot write {path}: {error.strerror or error}", err=True)
            sys.exit(1)
    click.echo(output.stdout, nl=False)
