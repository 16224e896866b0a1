"""`aiollmux simulate`: command-line options turned into a scenario, run, and printed.

The click layer in `aiollmux.cli` only collects the options; everything that can be
wrong with them is reported here as a `UsageError` (or a `ConfigError` for a policy
knob), and the command prints it without a traceback.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiollmux.config import load_config
from aiollmux.simulate.chart import comparison_chart
from aiollmux.simulate.hook_costs import CostSpecError, parse_hook_costs
from aiollmux.simulate.report import Summary, render_csv, render_json, render_text
from aiollmux.simulate.scenario import (
    DEFAULT_POLICIES,
    Scenario,
    comparison_runs,
    comparison_table,
    policy_configs,
    run_scenario,
)
from aiollmux.simulate.workload import DEFAULTS, WorkloadError, parse_params


class UsageError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    workload: str = "bursty"
    trace: Path | None = None
    models: int = 2
    params: Sequence[str] = ()
    switch_costs: Sequence[str] = ()
    policies: Sequence[str] = ()
    settings: Sequence[str] = ()
    config_path: str | None = None
    concurrency: int = 0
    seed: int = 1
    memory_gb: float | None = None
    sizes: Sequence[str] = ()
    csv_path: str | None = None
    json_path: str | None = None
    compare: bool = False
    svg_path: str | None = None


@dataclass(frozen=True, slots=True)
class Output:
    stdout: str
    files: dict[str, str]  # path -> content


def execute(options: Options) -> Output:
    knobs = _knobs(options)
    if options.compare:
        return _compare(options, knobs)
    if options.svg_path is not None:
        raise UsageError("--svg draws the comparison: use it with --compare")
    scenario = _scenario(options)
    policies = policy_configs(options.policies or DEFAULT_POLICIES, knobs)
    try:
        summaries = run_scenario(scenario, policies)
    except (WorkloadError, ValueError) as error:  # a bad trace, a missing or too large size
        raise UsageError(str(error)) from None
    return _render(options, scenario, summaries)


def _compare(options: Options, knobs: dict[str, Any]) -> Output:
    settings = dict(_key_value(p, "--param") for p in options.params)
    if set(settings) - {"duration"}:
        raise UsageError("--compare runs its own workloads; only --param duration=S applies")
    try:
        duration = parse_params(settings).duration
    except WorkloadError as error:
        raise UsageError(str(error)) from None
    runs = comparison_runs(
        seed=options.seed, duration=duration, concurrency=options.concurrency, knobs=knobs
    )
    files = {options.svg_path: comparison_chart(runs)} if options.svg_path else {}
    return Output(comparison_table(runs), files)


def _knobs(options: Options) -> dict[str, Any]:
    """The `[policy]` table every simulated policy gets: the config file's, then --set."""
    knobs: dict[str, Any] = {}
    if options.config_path is not None:
        policy = load_config(options.config_path).policy
        knobs = {k: v for k, v in dataclasses.asdict(policy).items() if v is not None}
        del knobs["name"]
    for setting in options.settings:
        key, value = _key_value(setting, "--set")
        if key == "name":
            raise UsageError("--set name=…: choose policies with --policy NAME")
        knobs[key] = _toml_value(value)
    return knobs


def _key_value(text: str, option: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise UsageError(f"{option} {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def _toml_value(text: str) -> Any:
    """`60`, `true`, `1.5`, `"x"` as TOML reads them; anything else as a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _scenario(options: Options) -> Scenario:
    if options.trace is not None and options.params:
        raise UsageError("--param shapes a generated workload; a --trace has its own")
    try:
        costs = parse_hook_costs(options.switch_costs)
        base = DEFAULTS[options.workload]
        params = parse_params(dict(_key_value(p, "--param") for p in options.params), base)
    except (CostSpecError, WorkloadError) as error:
        raise UsageError(str(error)) from None
    if options.sizes and options.memory_gb is None:
        raise UsageError("--size needs --memory-gb (a budget to fit the sizes in)")
    sizes = {}
    for setting in options.sizes:
        model, text = _key_value(setting, "--size")
        try:
            sizes[model] = float(text)
        except ValueError:
            raise UsageError(f"--size {setting!r}: {text!r} is not a number of GB") from None
        if not sizes[model] > 0:
            raise UsageError(f"--size {setting!r}: expected more than 0 GB")
    return Scenario(
        workload=options.workload,
        trace=options.trace,
        models=options.models,
        params=params,
        hook_costs=costs,
        concurrency=options.concurrency,
        seed=options.seed,
        memory_gb=options.memory_gb,
        sizes=tuple(sizes.items()),
    )


def _render(options: Options, scenario: Scenario, summaries: Sequence[Summary]) -> Output:
    """Text on stdout; CSV and JSON to their files, or instead of the text for `-`."""
    if options.csv_path == options.json_path == "-":
        raise UsageError("--csv - and --json - would both write to stdout; choose one")
    rendered = {
        options.csv_path: render_csv(summaries) if options.csv_path else "",
        options.json_path: render_json(summaries, scenario.describe()) if options.json_path else "",
    }
    files = {path: text for path, text in rendered.items() if path and path != "-"}
    stdout = rendered.get("-") or render_text(summaries, heading(scenario, summaries))
    return Output(stdout, files)


def heading(scenario: Scenario, summaries: Iterable[Summary]) -> str:
    described = scenario.describe()
    first = next(iter(summaries), None)
    models = f" {first.models} models;" if first is not None else ""
    concurrency = scenario.concurrency or "unlimited"
    return (
        f"workload {described['workload']}:{models} switch cost {described['switch_cost']};"
        f" backend concurrency {concurrency}; seed {scenario.seed}"
    )
