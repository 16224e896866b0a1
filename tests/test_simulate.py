"""`aiollmux simulate`: the engine mirrors the switcher, runs are reproducible, and
cost-aware never starves a queue (a property over random workloads)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiollmux.cli import main
from aiollmux.config import PolicyConfig
from aiollmux.policy import Decision, PolicyContext
from aiollmux.simulate.engine import Run, Simulation, SimulationError, simulate
from aiollmux.simulate.hook_costs import CostSpecError, HookCosts, parse_hook_costs
from aiollmux.simulate.report import percentile, summarize
from aiollmux.simulate.scenario import DEFAULT_POLICIES, Scenario, policy_configs, run_scenario
from aiollmux.simulate.workload import (
    DEFAULTS,
    GENERATORS,
    Job,
    Params,
    Workload,
    WorkloadError,
    generate,
    load_trace,
    model_names,
    parse_params,
)

FIFO = PolicyConfig()
AWARE = PolicyConfig(name="cost-aware")


def trace(*jobs: tuple[float, str, float]) -> Workload:
    models = tuple(dict.fromkeys(model for _, model, _ in jobs))
    return Workload("trace", models, [Job(time=t, model=m, service=s) for t, m, s in jobs])


def run(workload: Workload, policy: PolicyConfig = FIFO, cost: float = 10.0, **kw: int) -> Run:
    return simulate(workload, policy, HookCosts(cost), **kw)


# -- the engine mirrors the switcher ----------------------------------------------------


def test_a_switch_holds_min_active_secs_drains_then_runs_the_hooks() -> None:
    policy = PolicyConfig(min_active_secs=30)
    result = run(trace((0, "a", 5), (12, "b", 1), (20, "a", 3), (45, "a", 1)), policy)
    cold, to_b, back = result.switches
    assert (cold.started, cold.ended) == (0, 10)
    # fifo decides at 12; a stays active until 10 + 30, and the request at 20 is admitted
    # during the hold, so the drain waits for it (until 23 < 40).
    assert (to_b.started, to_b.hooks_started, to_b.ended) == (12, 40, 50)
    # b holds the GPU for its own min_active_secs before the way back.
    assert (back.source, back.target, back.hooks_started, back.ended) == ("b", "a", 80, 90)
    late = result.requests[3]
    assert (late.job.time, late.admitted) == (45, 90)  # a was draining: it queued
    assert [r.wait for r in result.requests] == [10, 38, 0, 45]
    assert sum(result.gpu.values()) == pytest.approx(result.end)
    assert result.gpu["switching"] == 30


def test_the_drain_waits_for_in_flight_requests() -> None:
    result = run(trace((0, "a", 100), (20, "b", 1)))
    assert result.switches[1].hooks_started == 110
    assert result.requests[0].outcome == "served"


@pytest.mark.parametrize(
    ("policy", "cut_at"),
    [
        (PolicyConfig(drain_timeout_secs=7), 27),
        (PolicyConfig(drain_before_switch=False), 20),
    ],
    ids=["drain timeout", "no drain"],
)
def test_requests_still_in_flight_are_cut(policy: PolicyConfig, cut_at: float) -> None:
    result = run(trace((0, "a", 100), (20, "b", 1)), policy)
    first = result.requests[0]
    assert (first.outcome, first.ended) == ("cut", cut_at)
    assert result.switches[1].hooks_started == cut_at


def test_timeouts_and_full_queues() -> None:
    policy = PolicyConfig(request_timeout_secs=15, max_queued_requests=1)
    result = run(trace((0, "a", 1), (1, "a", 1), (16, "a", 1)), policy, cost=20)
    assert [r.outcome for r in result.requests] == ["timeout", "rejected", "served"]
    assert [r.wait for r in result.requests] == [15, 0, 4]
    assert summarize(result).timed_out == summarize(result).rejected == 1


def test_a_backend_serves_concurrency_requests_at_once() -> None:
    jobs = [(0.0, "a", 4.0)] * 3
    serial = run(trace(*jobs), concurrency=1)
    assert [r.started for r in serial.requests] == [10, 14, 18]
    assert [r.wait for r in serial.requests] == [10, 10, 10]  # the switcher's queue only
    assert serial.gpu["serving"] == 12
    batched = run(trace(*jobs), concurrency=0)
    assert [r.started for r in batched.requests] == [10, 10, 10]
    assert batched.gpu["serving"] == 4


class ScriptedPolicy:
    """Defers for a while, then waits for the active model's in-flight count to reach
    zero; records when it was asked."""

    tick_interval: float | None = None

    def __init__(self, config: PolicyConfig) -> None:
        self.asked: list[float] = []

    def decide(self, context: PolicyContext) -> Decision:
        self.asked.append(context.now)
        if context.now < 4:
            return Decision.defer(until=context.now + 2.5)
        if context.active_in_flight:
            return Decision.defer()
        assert context.target is not None
        return Decision.switch(context.target)


class TickingPolicy:
    tick_interval: float | None = 2.0

    def __init__(self, config: PolicyConfig) -> None:
        self.asked: list[float] = []

    def decide(self, context: PolicyContext) -> Decision:
        self.asked.append(context.now)
        assert context.target is not None
        return Decision.switch(context.target) if context.now >= 5 else Decision.defer()


def _asked(policy_class: str, workload: Workload) -> list[float]:
    simulation = Simulation(
        workload, PolicyConfig(name=f"tests.test_simulate:{policy_class}"), HookCosts(10.0)
    )
    simulation.run()
    asked: list[float] = simulation.policy.asked  # type: ignore[attr-defined]  # ours
    return asked


def test_the_policy_is_asked_when_the_switcher_asks() -> None:
    # Each enqueued request (0, 1, 2), a deferral's time (4.5), after a switch (14.5),
    # and when the active model's in-flight count reaches zero (19.5).
    workload = trace((0, "a", 5), (1, "b", 1), (2, "b", 1))
    assert _asked("ScriptedPolicy", workload) == [0, 1, 2, 4.5, 14.5, 19.5]


def test_a_policy_with_a_tick_is_asked_every_tick_while_requests_wait() -> None:
    assert _asked("TickingPolicy", trace((0, "a", 1))) == [0, 2, 4, 6]


class NeverPolicy:
    tick_interval: float | None = 3600.0

    def __init__(self, config: PolicyConfig) -> None:
        pass

    def decide(self, context: PolicyContext) -> Decision:
        return Decision.skip()


def test_requests_a_policy_never_serves_end_unserved_a_virtual_day_later() -> None:
    config = PolicyConfig(name="tests.test_simulate:NeverPolicy")
    result = simulate(trace((5, "a", 1), (10, "b", 1)), config, HookCosts(1.0))
    assert [r.outcome for r in result.requests] == ["unserved", "unserved"]
    assert result.end == 10 + 86_400
    assert [r.wait for r in result.requests] == [86_405, 86_400]
    assert result.gpu["idle"] == result.end
    assert summarize(result).unserved == 2


class PresentPolicy:
    tick_interval: float | None = None

    def __init__(self, config: PolicyConfig) -> None:
        pass

    def decide(self, context: PolicyContext) -> Decision:
        return Decision.defer(until=context.now)


def test_a_policy_that_defers_to_the_present_forever_is_an_error() -> None:
    config = PolicyConfig(name="tests.test_simulate:PresentPolicy")
    with pytest.raises(SimulationError, match="no virtual time passed"):
        simulate(trace((0, "a", 1)), config, HookCosts(1.0))


# -- reproducible, and sane ----------------------------------------------------------------


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_the_same_seed_gives_the_same_numbers(workload: str) -> None:
    def numbers(seed: int) -> list[dict[str, object]]:
        params = Params(duration=1800.0, rate=0.2)
        scenario = Scenario(workload=workload, params=params, seed=seed)
        return [s.as_dict() for s in run_scenario(scenario, [FIFO, AWARE])]

    assert numbers(7) == numbers(7)
    assert numbers(7) != numbers(8)


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_on_a_single_model_both_policies_are_identical(workload: str) -> None:
    scenario = Scenario(workload=workload, models=1, params=Params(duration=1800.0), seed=3)
    fifo, aware = (
        simulate(scenario.make_workload(), policy, scenario.hook_costs) for policy in (FIFO, AWARE)
    )
    assert len(fifo.switches) == len(aware.switches) == 1
    assert [r.wait for r in fifo.requests] == [r.wait for r in aware.requests]
    assert summarize(fifo).as_dict() | {"policy": "-"} == summarize(aware).as_dict() | {
        "policy": "-"
    }


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_with_free_switches_fifo_waits_least(workload: str) -> None:
    scenario = Scenario(workload=workload, hook_costs=HookCosts(0.0), params=Params(duration=3600))
    fifo, aware = run_scenario(scenario, [FIFO, AWARE])
    assert fifo.switching_secs == aware.switching_secs == 0
    assert fifo.switches > 0
    assert fifo.wait_mean <= aware.wait_mean


def test_the_targets_on_two_models_with_bursty_traffic_and_10_s_switches() -> None:
    scenario = Scenario(workload="bursty", models=2, hook_costs=HookCosts(10.0), seed=1)
    runs = [
        simulate(scenario.make_workload(), policy, scenario.hook_costs)
        for policy in policy_configs(DEFAULT_POLICIES, {})
    ]
    fifo, aware = (summarize(r) for r in runs)
    # Issue 5 asked for 3x; with the switcher's own cost sample (the hooks' time, which the
    # simulator now takes too) it is 406 -> 140, 2.9x (docs/policies.md).
    assert fifo.switches >= 2.8 * aware.switches
    assert aware.serving_share >= 0.8
    longest = max(s.ended - s.started for s in runs[1].switches)
    assert aware.wait_max <= AWARE.max_wait_secs + longest


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, f) for f in (0.5, 0.95, 0.99, 1.0)] == [50, 95, 99, 100]
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.01) == 3.0


# -- never starves a queue ---------------------------------------------------------------

# Hooks take some time: with none, a cut request resubmitted at once could switch forever
# without the virtual clock moving (the engine reports that as an error).
COSTS = st.sampled_from([0.1, 0.5, 2.0, 10.0, 60.0])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Workload, PolicyConfig, HookCosts, int]:
    models = model_names(draw(st.integers(2, 3)))
    params = Params(
        duration=draw(st.floats(60, 1200)),
        service=draw(st.floats(0.1, 10)),
        rate=draw(st.floats(0.01, 2)),
        on=draw(st.floats(5, 300)),
        off=draw(st.floats(5, 300)),
        users=draw(st.integers(1, 3)),
        think=draw(st.floats(0, 60)),
        batch_concurrency=draw(st.integers(1, 6)),
    )
    workload = GENERATORS[draw(st.sampled_from(sorted(GENERATORS)))](
        models, params, random.Random(draw(st.integers(0, 2**32)))
    )
    pairs = {(a, b): draw(COSTS) for a in ("idle", *models) for b in models if a != b}
    policy = PolicyConfig(
        name="cost-aware",
        max_wait_secs=draw(st.floats(1, 200)),
        staleness_factor=draw(st.floats(0, 10)),
        coalesce_ms=draw(st.floats(0, 2000)),
        linger_factor=draw(st.floats(0, 2)),
        initial_switch_cost_secs=draw(st.floats(0, 30)),
        min_active_secs=draw(st.sampled_from([0.0, 5.0, 30.0])),
        drain_timeout_secs=draw(st.sampled_from([0.0, 0.5, 3.0])),
        drain_before_switch=draw(st.booleans()),
    )
    # A drain is bounded by the longest request, or by the drain timeout when requests
    # may queue inside the backend.
    concurrency = draw(st.sampled_from([1, 4])) if policy.drain_timeout_secs else 0
    return workload, policy, HookCosts(draw(COSTS), pairs), concurrency


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_cost_aware_never_starves_a_queue(
    scenario: tuple[Workload, PolicyConfig, HookCosts, int],
) -> None:
    """Every request waits at most max(bound, S) + (n-1)*S + coalesce_ms, S being the
    longest switch (hold + drain + hooks), bound its staleness bound; S itself is
    bounded a priori."""
    workload, policy, costs, concurrency = scenario
    jobs = list(workload.jobs)
    result = simulate(workload, policy, costs, concurrency=concurrency)
    assert all(r.outcome in ("served", "cut") for r in result.requests)
    switch = max((s.ended - s.started for s in result.switches), default=0.0)
    longest_job = max((r.job.service for r in result.requests), default=0.0)
    drain = policy.drain_timeout_secs or longest_job
    hooks = max([costs.default, *costs.pairs.values()])
    assert switch <= policy.min_active_secs + drain + hooks + 1e-6
    # The policy's bound comes from EMA estimates of switches no longer than `switch`,
    # or from the initial cost while there are none.
    estimate = max(switch, policy.initial_switch_cost_secs)
    staleness = min(policy.max_wait_secs, policy.staleness_factor * estimate)
    others = len(workload.models) - 1
    bound = max(staleness, switch) + others * switch + policy.coalesce_ms / 1000
    for request in result.requests:
        assert request.wait <= bound + 1e-6, (request, bound, jobs[:3])


# -- workloads, traces, costs ------------------------------------------------------------


def test_a_trace_is_replayed_in_time_order(tmp_path: Path) -> None:
    file = tmp_path / "trace.jsonl"
    file.write_text(
        '{"time": 5, "model": "qwen", "service": 1.5}\n\n'
        '{"time": 0.5, "model": "llama", "service": 2}\n'
    )
    workload = load_trace(file)
    assert workload.models == ("llama", "qwen")
    assert [(j.time, j.model, j.service) for j in workload.jobs] == [
        (0.5, "llama", 2.0),
        (5.0, "qwen", 1.5),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no requests in the trace"),
        ("{nope\n", ":1: invalid JSON"),
        ("[1, 2]\n", ":1: expected an object"),
        ('{"time": 1, "service": 1}\n', ":1: model: expected a non-empty string"),
        ('\n{"time": "1", "model": "a", "service": 1}\n', ":2: time: expected a number"),
        ('{"time": 1, "model": "a", "service": -1}\n', ":1: service: expected a finite"),
        ('{"time": true, "model": "a", "service": 1}\n', ":1: time: expected a number"),
    ],
)
def test_trace_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    file = tmp_path / "trace.jsonl"
    file.write_text(text)
    with pytest.raises(WorkloadError, match=expected):
        load_trace(file)


def test_an_unreadable_trace(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read"):
        load_trace(tmp_path)


def test_hook_costs_by_pair() -> None:
    costs = parse_hook_costs(["5", "a:b=12", "idle:b=30", "*:c=40", "c:*=1"])
    assert costs.cost("a", "b") == 12
    assert costs.cost(None, "b") == 30
    assert costs.cost("b", "c") == 40
    assert costs.cost("c", "a") == 1
    assert costs.cost("b", "a") == 5
    assert parse_hook_costs([]).cost(None, "a") == 10
    assert costs.describe() == "5 s, *:c=40, a:b=12, c:*=1, idle:b=30"


@pytest.mark.parametrize("spec", ["x", "a=1", ":b=1", "a:=1", "a:b=-1", "a:b=inf", "1e999"])
def test_bad_hook_costs(spec: str) -> None:
    with pytest.raises(CostSpecError, match=spec.replace("*", r"\*")):
        parse_hook_costs([spec])


def test_workload_params() -> None:
    params = parse_params({"rate": "0.5", "users": "0", "batch_size": "10"}, DEFAULTS["bursty"])
    assert (params.rate, params.users, params.batch_size) == (0.5, 0, 10)
    assert params.service == DEFAULTS["bursty"].service
    for bad, message in [
        ({"rat": "1"}, "unknown parameter 'rat'"),
        ({"rate": "fast"}, "rate: expected a number"),
        ({"rate": "0"}, "rate: expected a number greater than 0"),
        ({"users": "1.5"}, "users: expected a number"),
        ({"users": "-1"}, "users: expected a number 0 or more"),
    ]:
        with pytest.raises(WorkloadError, match=message):
            parse_params(bad)


def test_clients_that_would_start_after_the_end_make_no_request() -> None:
    workload = generate("chat", 2, Params(duration=1, think=10_000), 1)
    assert workload.jobs == []
    assert run(workload).requests == []


def test_a_batch_of_a_given_size_is_served_whole() -> None:
    params = Params(batch_size=10, batch_concurrency=3, users=1, duration=60)
    result = run(generate("batch", 2, params, 1))
    batch = [r for r in result.requests if r.job.model == "m1"]
    assert len(batch) == 10
    assert all(r.outcome == "served" for r in result.requests)


# -- the command -------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["simulate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_simulate_prints_the_policies_side_by_side() -> None:
    code, out, _ = invoke("--param", "duration=900", "--switch-cost", "5", "--seed", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "workload bursty: 2 models; switch cost 5 s; backend concurrency unlimited; seed 2"
    )
    assert lines[1].split() == ["fifo", "cost-aware"]
    labels = [line.split("  ")[0] for line in lines[2:]]
    for label in ("switches", "GPU serving (s)", "GPU switching (s)", "GPU idle (s)"):
        assert label in labels
    for label in ("wait p50 (s)", "wait p95 (s)", "wait p99 (s)", "wait max m2 (s)"):
        assert label in labels
    assert invoke("--param", "duration=900", "--switch-cost", "5", "--seed", "2")[1] == out


def test_simulate_writes_csv_and_json(tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    code, out, _ = invoke(
        "-w", "chat", "--param", "duration=600", "--csv", "-", "--json", str(out_json)
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["policy"] for row in rows] == ["fifo", "cost-aware"]
    assert {"switches", "wait_p95", "wait_max:m1", "serving_share"} <= set(rows[0])
    document = json.loads(out_json.read_text())
    assert document["scenario"]["workload"] == "chat"
    assert [r["switches"] for r in document["results"]] == [int(r["switches"]) for r in rows]


def test_simulate_a_trace_with_a_chosen_policy_and_knobs(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_text(
        "".join(f'{{"time": {t}, "model": "{m}", "service": 1}}\n' for t, m in [(0, "x"), (1, "y")])
    )
    code, out, _ = invoke(
        "--trace", str(file), "--policy", "cost-aware", "--set", "coalesce_ms=0", "--json", "-"
    )
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert (result["policy"], result["switches"], result["served"]) == ("cost-aware", 2, 2)


def test_simulate_takes_the_knobs_of_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "llmux.toml"
    config.write_text(
        '[policy]\nmax_wait_secs = 1\n[models.a]\nport = 9000\nwake = "true"\n'
        'sleep = "true"\nalive = "true"\n'
    )
    code, out, _ = invoke(
        "-c", str(config), "--param", "duration=900", "--json", "-", "--policy", "cost-aware"
    )
    loose = json.loads(
        invoke("--param", "duration=900", "--json", "-", "--policy", "cost-aware")[1]
    )
    assert code == 0
    assert json.loads(out)["results"][0]["switches"] > loose["results"][0]["switches"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "max_wait_secs=0"], "error: command line: policy.max_wait_secs: expected a"),
        (["--set", "nope=1"], "policy.nope: unknown key"),
        (["--set", "coalesce_ms=soon"], "policy.coalesce_ms: expected a number, got the string"),
        (["--set", "name=fifo"], "choose policies with --policy"),
        (["--set", "oops"], "--set 'oops': expected KEY=VALUE"),
        (["--policy", "lifo"], "policy.name: unknown policy 'lifo'"),
        (["--policy", "no_such_module_xyz:P"], "cannot import no_such_module_xyz"),
        (["--param", "rat=1"], "unknown parameter 'rat'"),
        (["--switch-cost", "a:b=x"], "'x' is not a number of seconds"),
        (["--switch-cost", "ab=1"], "expected SECS or FROM:TO=SECS"),
        (["--csv", "-", "--json", "-"], "both write to stdout"),
        (["--compare", "--param", "rate=1"], "only --param duration=S applies"),
        (["--compare", "--param", "duration=x"], "duration: expected a number"),
        (["--policy", "tests.test_simulate:PresentPolicy"], "no virtual time passed"),
    ],
)
def test_simulate_errors_exit_2(args: list[str], message: str) -> None:
    code, out, err = (
        invoke("--param", "duration=60", *args) if "--compare" not in args else invoke(*args)
    )
    assert code == 2
    assert out == ""
    assert message in err


def test_simulate_a_broken_trace(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_text('{"time": 0, "model": "x"}\n')
    code, _, err = invoke("--trace", str(file))
    assert (code, err) == (2, f"error: {file}:1: service: expected a number of seconds\n")


def test_simulate_a_trace_rejects_workload_params(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_text('{"time": 0, "model": "x", "service": 1}\n')
    code, _, err = invoke("--trace", str(file), "--param", "rate=1")
    assert (code, err) == (2, "error: --param shapes a generated workload; a --trace has its own\n")


def test_simulate_compare_prints_the_table() -> None:
    code, out, _ = invoke("--compare", "--param", "duration=300")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("| workload | models | switch | switches |")
    assert len(lines) == 2 + 3 * 2 * 3
    assert lines[2].startswith("| bursty | 2 | 2 s | ")


def test_simulate_compare_draws_the_chart(tmp_path: Path) -> None:
    chart = tmp_path / "chart.svg"
    code, out, _ = invoke("--compare", "--param", "duration=300", "--svg", str(chart))
    assert code == 0
    assert out.startswith("| workload |")  # the table still goes to stdout
    svg = ElementTree.parse(chart).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    scenarios = svg.findall(".//{http://www.w3.org/2000/svg}g")
    assert len(scenarios) == 3 * 2 * 3
    title = scenarios[0].findtext("{http://www.w3.org/2000/svg}title")
    assert title is not None
    assert title.startswith("bursty, 2 models, 2 s switches: serving ")
    for scenario in scenarios:  # fifo hollow, cost-aware filled
        fifo, aware = scenario.findall("{http://www.w3.org/2000/svg}circle")
        assert fifo.get("fill") == "white"
        assert aware.get("fill") == fifo.get("stroke")


def test_simulate_svg_needs_compare(tmp_path: Path) -> None:
    code, _, err = invoke("--svg", str(tmp_path / "chart.svg"))
    assert (code, err) == (2, "error: --svg draws the comparison: use it with --compare\n")
    assert not (tmp_path / "chart.svg").exists()


def test_the_table_in_docs_is_the_one_the_simulator_prints() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "policy_table.py"
    # Untraced: coverage would triple the time of these 36 four-hour runs, and the
    # engine's coverage comes from the tests above.
    env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}
    done = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_requests_arriving_together_are_weighed_together() -> None:
    # The daemon's driver answers all the kicks of one event-loop iteration with one
    # ask, so cost-aware sees three beta requests beside one alpha request and wakes
    # beta first. Asked once per arrival, it would wake alpha.
    aware = PolicyConfig(name="cost-aware", coalesce_ms=0.0, linger_factor=0.0)
    workload = trace((0, "alpha", 1), (0, "beta", 1), (0, "beta", 1), (0, "beta", 1))
    result = run(workload, aware, cost=1.0)
    assert [s.target for s in result.switches] == ["beta", "alpha"]
