"""The configuration file (docs/design.md §2): every rule, and the message each breach gives."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from aiollmux.config import (
    Config,
    GroupConfig,
    ModelConfig,
    PolicyConfig,
    hook_warnings,
    load_config,
    parse_config,
)
from aiollmux.errors import ConfigError

SOURCE = "/etc/aiollmux/llmux.toml"
HOOKS = 'wake = "./wake.sh"\nsleep = "./sleep.sh"\nalive = "true"\n'


def model(key: str = "llama", port: int = 8001, extra: str = "", hooks: str = HOOKS) -> str:
    """One `[models.<key>]` table; `key` is written as it appears in TOML (quoted or bare)."""
    return f"[models.{key}]\nport = {port}\n{hooks}{extra}\n"


LLAMA = model()


def parse(text: str) -> Config:
    return parse_config(text, SOURCE, base_dir=Path("/srv/llm"))


def assert_error(text: str, key: str, *expected: str) -> ConfigError:
    """The text is rejected with a message naming the file, exactly `key`, and `expected`."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    error = info.value
    assert error.source == SOURCE
    assert error.key == key
    prefix = f"{SOURCE}: {key}: " if key else f"{SOURCE}: "
    assert str(error).startswith(prefix), str(error)
    for fragment in expected:
        assert fragment in error.detail, f"{fragment!r} not in {error.detail!r}"
    return error


# -- unknown keys --------------------------------------------------------------------------

UNKNOWN_KEYS = [
    ("root", "verbose = true\n" + LLAMA, "verbose", "unknown key; expected one of host, port"),
    ("root typo", "prot = 3000\n" + LLAMA, "prot", "did you mean 'port'?"),
    ("singular models", "[model.llama]\nport = 8001\n", "model", "did you mean 'models'?"),
    ("policy", '[policy]\nnme = "fifo"\n' + LLAMA, "policy.nme", "did you mean 'name'?"),
    ("policy far", "[policy]\nzzz = 1\n" + LLAMA, "policy.zzz", "expected one of name,"),
    ("model", model(extra="prot = 1\n"), "models.llama.prot", "did you mean 'port'?"),
    (
        "quoted model",
        model('"Qwen/Qwen2.5-7B"', extra='colour = "red"\n'),
        'models."Qwen/Qwen2.5-7B".colour',
        "expected one of port, wake, sleep, alive",
    ),
    ("group", "[groups.gpu0]\nsize = 2\n" + LLAMA, "groups.gpu0.size", "expected one of exclusive"),
    (
        "unquoted dotted id",
        "[models.llama3.1]\nport = 8001\n" + HOOKS,
        "models.llama3.1",
        """an id containing '.' must be quoted: [models."llama3.1"]""",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [case[1:] for case in UNKNOWN_KEYS],
    ids=[case[0] for case in UNKNOWN_KEYS],
)
def test_unknown_keys_are_errors(text: str, key: str, expected: str) -> None:
    assert_error(text, key, "unknown key", expected)


def test_unknown_key_is_reported_before_a_missing_one() -> None:
    # A typo of a required key names the typo, not "wake is required".
    text = '[models.llama]\nport = 8001\nwak = "x"\nsleep = "y"\nalive = "z"\n'
    assert_error(text, "models.llama.wak", "did you mean 'wake'?")


# -- wrong types ---------------------------------------------------------------------------

WRONG_TYPES = [
    ('port = "3000"', "port", "expected a whole number from 1 to 65535, got the string '3000'"),
    ("port = true", "port", "got the boolean true"),
    ("port = 3000.0", "port", "got the number 3000.0"),
    ("port = 1979-05-27", "port", "got the date/time 1979-05-27"),
    ("host = 1", "host", "expected a listen address, got the whole number 1"),
    ("max_request_body_mb = true", "max_request_body_mb", "expected a number, got the boolean"),
    ('shutdown_timeout_secs = "30"', "shutdown_timeout_secs", "expected a number, got the string"),
    ("alive_interval_secs = []", "alive_interval_secs", "expected a number, got a list"),
    ("sleep_on_shutdown = 1", "sleep_on_shutdown", "expected true or false, got the whole number"),
    ("sleep_on_shutdown = 0.0", "sleep_on_shutdown", "expected true or false, got the number 0.0"),
    ('sleep_on_shutdown = "yes"', "sleep_on_shutdown", "expected true or false, got the string"),
    ('api_keys = "sk-1"', "api_keys", "expected a list of strings, got the string 'sk-1'"),
    ('api_keys = ["sk-1", 2]', "api_keys[1]", "expected a non-empty string, got the whole number"),
    ("api_keys = [{a = 1}]", "api_keys[0]", "expected a non-empty string, got a table"),
    ("admin_token = 5", "admin_token", "expected a string, got the whole number 5"),
    ('policy = "fifo"', "policy", "expected a table, got the string 'fifo'"),
    ("groups = 1", "groups", "expected a table, got the whole number 1"),
    ("groups = { gpu0 = 1 }", "groups.gpu0", "expected a table, got the whole number 1"),
    ("models = 3", "models", "expected a table, got the whole number 3"),
    ("models = { llama = [] }", "models.llama", "expected a table, got a list"),
]


@pytest.mark.parametrize(("line", "key", "expected"), WRONG_TYPES)
def test_wrong_top_level_types(line: str, key: str, expected: str) -> None:
    text = line + "\n" + ("" if line.startswith("models") else LLAMA)
    assert_error(text, key, expected)


POLICY_TYPES = [
    ("name = 3", "policy.name", "expected a policy name, got the whole number 3"),
    ("request_timeout_secs = true", "policy.request_timeout_secs", "expected a number, got the"),
    ('min_active_secs = "1"', "policy.min_active_secs", "expected a number, got the string"),
    ("drain_before_switch = 1", "policy.drain_before_switch", "expected true or false"),
    ('drain_before_switch = "no"', "policy.drain_before_switch", "expected true or false"),
    ("max_queued_requests = 1.5", "policy.max_queued_requests", "whole number from 0 to"),
    ("max_queued_requests = true", "policy.max_queued_requests", "got the boolean true"),
    ("max_queued_requests = -1", "policy.max_queued_requests", "from 0 to 1000000, got -1"),
    ("max_queued_requests = 1000001", "policy.max_queued_requests", "got 1000001"),
]


@pytest.mark.parametrize(("line", "key", "expected"), POLICY_TYPES)
def test_wrong_policy_types(line: str, key: str, expected: str) -> None:
    assert_error(f"[policy]\n{line}\n" + LLAMA, key, expected)


MODEL_TYPES = [
    ('port = "8001"', "port", "expected a whole number from 1 to 65535, got the string '8001'"),
    ("port = true", "port", "got the boolean true"),
    ("port = 8001.5", "port", "got the number 8001.5"),
    ("wake = 1", "wake", "expected a hook command (a script path or inline shell), got the"),
    ("sleep = true", "sleep", "expected a hook command"),
    ('alive = ["curl"]', "alive", "expected a hook command (a script path or inline shell), got a"),
    ("wake_timeout_secs = true", "wake_timeout_secs", "expected a number, got the boolean true"),
    ('sleep_timeout_secs = "60"', "sleep_timeout_secs", "expected a number, got the string"),
    ("alive_timeout_secs = {}", "alive_timeout_secs", "expected a number, got a table"),
    ('aliases = "llama3"', "aliases", "expected a list of strings, got the string 'llama3'"),
    ('aliases = ["ok", 3]', "aliases[1]", "expected a non-empty string, got the whole number 3"),
    ("upstream_model = 1", "upstream_model", "expected a string, got the whole number 1"),
    ("group = 1", "group", "expected a group name, got the whole number 1"),
]


@pytest.mark.parametrize(("line", "key", "expected"), MODEL_TYPES)
def test_wrong_model_types(line: str, key: str, expected: str) -> None:
    name = line.split(" = ")[0]
    hooks = "".join(h for h in HOOKS.splitlines(keepends=True) if not h.startswith(name))
    text = f"[models.llama]\n{line}\n" + hooks + ("" if name == "port" else "port = 8001\n")
    assert_error(text, f"models.llama.{key}", expected)


@pytest.mark.parametrize(
    ("line", "key"),
    [("exclusive = 1", "exclusive"), ('persistent = "yes"', "persistent")],
)
def test_wrong_group_types(line: str, key: str) -> None:
    text = f"[groups.gpu0]\n{line}\n" + LLAMA
    assert_error(text, f"groups.gpu0.{key}", "expected true or false")


# -- ports ---------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_listen_port_out_of_range(port: int) -> None:
    assert_error(f"port = {port}\n" + LLAMA, "port", f"from 1 to 65535, got {port}")


@pytest.mark.parametrize("port", [0, -8001, 65536])
def test_model_port_out_of_range(port: int) -> None:
    assert_error(model(port=port), "models.llama.port", f"from 1 to 65535, got {port}")


def test_ports_at_the_bounds_are_accepted() -> None:
    config = parse("port = 65535\n" + model(port=1))
    assert (config.port, config.models["llama"].port) == (65535, 1)


def test_two_models_on_one_port() -> None:
    text = model("a", 8001) + model("b", 8002) + model('"c/d"', 8001)
    assert_error(text, 'models."c/d".port', "port 8001 is already used by model 'a'")


@pytest.mark.parametrize(
    ("top", "port"), [("", 3000), ("port = 8001\n", 8001)], ids=["default", "explicit"]
)
def test_model_on_aiollmux_own_port(top: str, port: int) -> None:
    assert_error(top + model(port=port), "models.llama.port", f"port {port} is aiollmux's own")


# -- aliases -------------------------------------------------------------------------------


ALIASES = [
    (
        "another model's id",
        model("a", 8001, 'aliases = ["x", "b"]\n') + model("b", 8002),
        "models.a.aliases[1]",
        "alias 'b' is already the id of model 'b'",
    ),
    (
        "its own id",
        model("a", 8001, 'aliases = ["a"]\n'),
        "models.a.aliases[0]",
        "alias 'a' is already the id of model 'a'",
    ),
    (
        "another model's alias",
        model("a", 8001, 'aliases = ["x"]\n')
        + model('"Qwen/Qwen2.5-7B"', 8002, 'aliases = ["y", "x"]\n'),
        'models."Qwen/Qwen2.5-7B".aliases[1]',
        "alias 'x' is already an alias of model 'a'",
    ),
    (
        "twice in one list",
        model('"Qwen/Qwen2.5-7B"', 8002, 'aliases = ["qwen", "qwen"]\n'),
        'models."Qwen/Qwen2.5-7B".aliases[1]',
        "alias 'qwen' is listed twice (also at aliases[0])",
    ),
    ("empty", model(extra='aliases = [""]\n'), "models.llama.aliases[0]", "non-empty string"),
    ("blank", model(extra='aliases = ["ok", " "]\n'), "models.llama.aliases[1]", "non-empty"),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"), [c[1:] for c in ALIASES], ids=[c[0] for c in ALIASES]
)
def test_alias_collisions(text: str, key: str, expected: str) -> None:
    assert_error(text, key, expected)


# -- policy and groups ---------------------------------------------------------------------


def test_unknown_policy_name() -> None:
    text = '[policy]\nname = "lifo"\n' + LLAMA
    assert_error(text, "policy.name", "unknown policy 'lifo'", "fifo", "'package.module:ClassName'")


@pytest.mark.parametrize(
    "name", ["pkg.mod:", ":Class", "pkg..mod:Class", "pkg.mod:Cl ass", "1pkg:Class", "a:B:C"]
)
def test_malformed_policy_import_path(name: str) -> None:
    text = f'[policy]\nname = "{name}"\n' + LLAMA
    assert_error(text, "policy.name", f"malformed policy import path {name!r}", "ClassName'")


def test_policy_import_path_is_accepted_unloaded() -> None:
    # Loading the class is `load_policy`'s job; the config only checks the shape.
    config = parse('[policy]\nname = "my_lab.policies:Cheapest"\n' + LLAMA)
    assert config.policy.name == "my_lab.policies:Cheapest"


# -- cost-aware's knobs (docs/policies.md) -------------------------------------------------

COST_AWARE_KNOBS = """[policy]
name = "cost-aware"
max_wait_secs = 45
staleness_factor = 3.5
coalesce_ms = 0
linger_factor = 0
initial_switch_cost_secs = 20
"""


def test_cost_aware_knobs() -> None:
    policy = parse(COST_AWARE_KNOBS + LLAMA).policy
    assert policy.name == "cost-aware"
    assert (policy.max_wait_secs, policy.staleness_factor) == (45.0, 3.5)
    assert (policy.coalesce_ms, policy.linger_factor, policy.initial_switch_cost_secs) == (
        0.0,
        0.0,
        20.0,
    )


def test_cost_aware_knob_defaults() -> None:
    policy = parse('[policy]\nname = "cost-aware"\n' + LLAMA).policy
    assert policy == PolicyConfig(name="cost-aware")
    assert (policy.max_wait_secs, policy.staleness_factor, policy.coalesce_ms) == (120, 5, 200)
    assert (policy.linger_factor, policy.initial_switch_cost_secs) == (0.5, 10)


def test_fifo_accepts_and_ignores_cost_aware_knobs() -> None:
    # So that changing `name` alone switches policies (a reload, `aiollmux simulate`).
    text = COST_AWARE_KNOBS.replace('"cost-aware"', '"fifo"')
    assert parse(text + LLAMA).policy.max_wait_secs == 45.0


COST_AWARE_ERRORS = [
    ('max_wait_secs = "60"', "policy.max_wait_secs", "expected a number, got the string '60'"),
    ("max_wait_secs = 0", "policy.max_wait_secs", "expected a number greater than 0, got 0"),
    ("staleness_factor = -1", "policy.staleness_factor", "0 or more, got -1"),
    ("staleness_factor = inf", "policy.staleness_factor", "expected a finite number"),
    ("coalesce_ms = 10001", "policy.coalesce_ms", "expected a number of at most 10000"),
    ("coalesce_ms = -5", "policy.coalesce_ms", "0 or more, got -5"),
    ("linger_factor = true", "policy.linger_factor", "expected a number, got the boolean true"),
    ("initial_switch_cost_secs = nan", "policy.initial_switch_cost_secs", "finite number"),
    ("max_wait = 5", "policy.max_wait", "unknown key; did you mean 'max_wait_secs'?"),
    ("staleness = 5", "policy.staleness", "did you mean 'staleness_factor'?"),
]


@pytest.mark.parametrize(("line", "key", "expected"), COST_AWARE_ERRORS)
def test_cost_aware_knob_errors(line: str, key: str, expected: str) -> None:
    assert_error(f'[policy]\nname = "cost-aware"\n{line}\n' + LLAMA, key, expected)


def test_a_policy_table_from_a_mapping_is_validated_the_same_way() -> None:
    from aiollmux.config import parse_policy

    assert parse_policy({"name": "cost-aware", "coalesce_ms": 5}, "cli").coalesce_ms == 5.0
    with pytest.raises(ConfigError) as info:
        parse_policy({"max_wait_secs": 0}, "cli")
    assert str(info.value).startswith("cli: policy.max_wait_secs: expected a number greater")


def test_unknown_group() -> None:
    text = "[groups.gpu0]\n" + model(extra='group = "gpu1"\n')
    assert_error(
        text,
        "models.llama.group",
        "unknown group 'gpu1': declare it as [groups.gpu1]",
        "(declared: default, gpu0)",
    )


def test_unknown_group_suggests_a_quoted_table_when_needed() -> None:
    assert_error(model(extra='group = "gpu.0"\n'), "models.llama.group", '[groups."gpu.0"]')


def test_group_flags() -> None:
    text = "[groups.gpu0]\nexclusive = true\n[groups.embed]\npersistent = true\n"
    config = parse(text + model(extra='group = "gpu0"\n'))
    assert config.groups["gpu0"] == GroupConfig(name="gpu0", exclusive=True)
    assert config.groups["embed"] == GroupConfig(name="embed", persistent=True)


def test_group_flags_false_are_accepted() -> None:
    text = "[groups.gpu0]\nexclusive = false\npersistent = false\n"
    config = parse(text + model(extra='group = "gpu0"\n'))
    assert config.groups == {
        "default": GroupConfig(name="default"),
        "gpu0": GroupConfig(name="gpu0", exclusive=False, persistent=False),
    }
    assert config.models["llama"].group == "gpu0"


# -- memory budgets (docs/design.md §8) --------------------------------------------------


def test_a_memory_budget_on_the_default_group_and_sizes_on_its_models() -> None:
    text = "[groups.default]\nmemory_gb = 24\n" + model(extra="memory_gb = 8.5\n")
    text += model("embed", 8002, extra="memory_gb = 1\n")
    config = parse(text)
    assert config.groups["default"] == GroupConfig(name="default", memory_gb=24.0)
    assert config.models["llama"].memory_gb == 8.5
    assert config.models["embed"].memory_gb == 1.0


def test_free_memory_probe_and_its_timeout() -> None:
    text = '[groups.gpu0]\nmemory_gb = 12\nfree_memory = "echo 12"\n'
    text += "free_memory_timeout_secs = 5\n"
    config = parse(text + model(extra='group = "gpu0"\nmemory_gb = 4\n'))
    group = config.groups["gpu0"]
    assert (group.free_memory, group.free_memory_timeout_secs) == ("echo 12", 5.0)
    assert GroupConfig(name="x").free_memory_timeout_secs == 60.0


def test_a_models_memory_without_a_group_budget_is_kept_and_has_no_effect() -> None:
    config = parse(model(extra="memory_gb = 80\n"))
    assert config.models["llama"].memory_gb == 80.0
    assert config.groups["default"].memory_gb is None


BAD_MEMORY = [
    (
        "missing on a member",
        "[groups.gpu0]\nmemory_gb = 24\n" + model(extra='group = "gpu0"\n'),
        "models.llama.memory_gb",
        "is required: group 'gpu0' has a memory budget (groups.gpu0.memory_gb = 24)",
    ),
    (
        "larger than the budget",
        "[groups.default]\nmemory_gb = 8\n" + model(extra="memory_gb = 8.5\n"),
        "models.llama.memory_gb",
        "8.5 GiB is more than its group's whole budget (groups.default.memory_gb = 8)",
    ),
    (
        "zero on a model",
        model(extra="memory_gb = 0\n"),
        "models.llama.memory_gb",
        "expected a number greater than 0, got 0",
    ),
    (
        "negative on a group",
        "[groups.default]\nmemory_gb = -1\n" + LLAMA,
        "groups.default.memory_gb",
        "expected a number greater than 0",
    ),
    (
        "not a number",
        '[groups.default]\nmemory_gb = "24GB"\n' + LLAMA,
        "groups.default.memory_gb",
        "expected a number, got the string '24GB'",
    ),
    (
        "probe without a budget",
        '[groups.default]\nfree_memory = "echo 1"\n' + LLAMA,
        "groups.default.free_memory",
        "needs a memory budget",
    ),
    (
        "probe timeout zero",
        "[groups.default]\nmemory_gb = 8\nfree_memory_timeout_secs = 0\n"
        + model(extra="memory_gb = 1\n"),
        "groups.default.free_memory_timeout_secs",
        "greater than 0",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "message"), [case[1:] for case in BAD_MEMORY], ids=[c[0] for c in BAD_MEMORY]
)
def test_bad_memory_settings_name_their_key(text: str, key: str, message: str) -> None:
    assert_error(text, key, message)


# -- empty and missing values --------------------------------------------------------------

EMPTY = [
    ('host = ""\n' + LLAMA, "host", "must not be empty: expected a listen address"),
    ('admin_token = ""\n' + LLAMA, "admin_token", "must not be empty"),
    ('[policy]\nname = " "\n' + LLAMA, "policy.name", "must not be empty: expected a policy name"),
    (model(hooks='wake = ""\nsleep = "s"\nalive = "a"\n'), "models.llama.wake", "must not be"),
    (model(hooks='wake = "w"\nsleep = "  "\nalive = "a"\n'), "models.llama.sleep", "must not"),
    (model(hooks='wake = "w"\nsleep = "s"\nalive = "\t"\n'), "models.llama.alive", "must not"),
    (model(extra='upstream_model = ""\n'), "models.llama.upstream_model", "must not be empty"),
    ("[groups.gpu0]\n" + model(extra='group = ""\n'), "models.llama.group", "must not be empty"),
    (model('""'), 'models.""', "a model id must not be empty"),
    (model('" "'), 'models." "', "a model id must not be empty"),
    ('[groups.""]\n' + LLAMA, 'groups.""', "a group name must not be empty"),
]


@pytest.mark.parametrize(("text", "key", "expected"), EMPTY)
def test_empty_strings_are_errors(text: str, key: str, expected: str) -> None:
    assert_error(text, key, expected)


@pytest.mark.parametrize("missing", ["port", "wake", "sleep", "alive"])
def test_required_model_keys(missing: str) -> None:
    lines = ["port = 8001", *HOOKS.splitlines()]
    kept = "\n".join(line for line in lines if not line.startswith(missing))
    expected = "a whole number from 1 to 65535" if missing == "port" else "a hook command"
    assert_error(f"[models.llama]\n{kept}\n", f"models.llama.{missing}", "is required", expected)


@pytest.mark.parametrize("text", ["", 'host = "0.0.0.0"\n', "[models]\n", "[policy]\n"])
def test_at_least_one_model(text: str) -> None:
    assert_error(text, "models", "at least one model is required, e.g. [models.llama]")


# -- TOML syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("port = 3000\nhost = \n" + LLAMA, 2),
        (LLAMA + "[models.llama]\nport = 8002\n", 7),
        ("port = 3000\n[models.llama\nport = 1\n", 2),
    ],
    ids=["missing value", "table twice", "unclosed header"],
)
def test_invalid_toml_names_the_line(text: str, line: int) -> None:
    error = assert_error(text, "", "invalid TOML: ", f"line {line}")
    assert "Traceback" not in str(error)


# -- numbers -------------------------------------------------------------------------------


NON_FINITE = [
    ("shutdown_timeout_secs = nan\n" + LLAMA, "shutdown_timeout_secs", "nan"),
    ("alive_interval_secs = inf\n" + LLAMA, "alive_interval_secs", "inf"),
    ("max_request_body_mb = -inf\n" + LLAMA, "max_request_body_mb", "-inf"),
    ("[policy]\nmin_active_secs = inf\n" + LLAMA, "policy.min_active_secs", "inf"),
    ("[policy]\nrequest_timeout_secs = nan\n" + LLAMA, "policy.request_timeout_secs", "nan"),
    (model(extra="wake_timeout_secs = inf\n"), "models.llama.wake_timeout_secs", "inf"),
]


@pytest.mark.parametrize(("text", "key", "value"), NON_FINITE)
def test_non_finite_numbers(text: str, key: str, value: str) -> None:
    assert_error(text, key, f"expected a finite number, got {value}")


NEGATIVE = [
    ("shutdown_timeout_secs = -1\n" + LLAMA, "shutdown_timeout_secs", "of 0 or more, got -1"),
    ("alive_interval_secs = -0.5\n" + LLAMA, "alive_interval_secs", "of 0 or more, got -0.5"),
    ("[policy]\nmin_active_secs = -2\n" + LLAMA, "policy.min_active_secs", "0 or more, got -2"),
    ("[policy]\ndrain_timeout_secs = -1\n" + LLAMA, "policy.drain_timeout_secs", "0 or more"),
    ("[policy]\nidle_sleep_secs = -1\n" + LLAMA, "policy.idle_sleep_secs", "0 or more"),
    ("[policy]\nrequest_timeout_secs = -5\n" + LLAMA, "policy.request_timeout_secs", "than 0"),
    ("[policy]\nrequest_timeout_secs = 0\n" + LLAMA, "policy.request_timeout_secs", "got 0"),
    (model(extra="wake_timeout_secs = -1\n"), "models.llama.wake_timeout_secs", "greater than 0"),
    (model(extra="sleep_timeout_secs = 0\n"), "models.llama.sleep_timeout_secs", "than 0, got 0"),
    (model(extra="alive_timeout_secs = -3\n"), "models.llama.alive_timeout_secs", "than 0"),
    ("max_request_body_mb = 0\n" + LLAMA, "max_request_body_mb", "greater than 0, got 0"),
]


@pytest.mark.parametrize(("text", "key", "expected"), NEGATIVE)
def test_negative_and_zero_durations(text: str, key: str, expected: str) -> None:
    assert_error(text, key, expected)


def test_request_body_limit_has_a_ceiling() -> None:
    # A bigger value would overflow the byte count the app compares against.
    assert_error("max_request_body_mb = 1e300\n" + LLAMA, "max_request_body_mb", "at most 1048576")


def test_zero_is_allowed_where_it_means_off() -> None:
    top = "shutdown_timeout_secs = 0\nalive_interval_secs = 0\n"
    policy = "[policy]\nmin_active_secs = 0\ndrain_timeout_secs = 0\nidle_sleep_secs = 0\n"
    config = parse(top + policy + LLAMA)
    assert config.shutdown_timeout_secs == config.alive_interval_secs == 0.0
    assert config.policy.drain_timeout_secs == config.policy.idle_sleep_secs == 0.0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("", None), ("[policy]\n", None), ("[policy]\nrequest_timeout_secs = 12.5\n", 12.5)],
    ids=["no policy table", "omitted", "set"],
)
def test_request_timeout(policy: str, expected: float | None) -> None:
    assert parse(policy + LLAMA).policy.request_timeout_secs == expected


def test_integers_are_accepted_as_seconds() -> None:
    config = parse("shutdown_timeout_secs = 5\n" + model(extra="wake_timeout_secs = 60\n"))
    assert config.shutdown_timeout_secs == 5.0
    assert isinstance(config.shutdown_timeout_secs, float)
    assert config.models["llama"].wake_timeout_secs == 60.0


# -- valid configurations ------------------------------------------------------------------


def test_defaults() -> None:
    config = parse(LLAMA)
    assert config.source == SOURCE
    assert config.base_dir == Path("/srv/llm")
    assert (config.host, config.port) == ("127.0.0.1", 3000)
    assert config.max_request_body_mb == 64.0
    assert config.max_request_body_bytes == 64 * 1024 * 1024
    assert config.shutdown_timeout_secs == 30.0
    assert config.sleep_on_shutdown is False
    assert config.alive_interval_secs == 30.0
    assert config.api_keys == ()
    assert config.admin_token is None
    assert config.policy == PolicyConfig(
        name="fifo",
        request_timeout_secs=None,
        drain_before_switch=True,
        min_active_secs=0.0,
        drain_timeout_secs=0.0,
        idle_sleep_secs=0.0,
        max_queued_requests=0,
    )
    assert config.groups == {"default": GroupConfig(name="default")}
    assert config.models == {
        "llama": ModelConfig(
            id="llama",
            port=8001,
            wake="./wake.sh",
            sleep="./sleep.sh",
            alive="true",
            wake_timeout_secs=600.0,
            sleep_timeout_secs=120.0,
            alive_timeout_secs=10.0,
            aliases=(),
            upstream_model=None,
            group="default",
        )
    }


def test_every_key_set() -> None:
    text = """
host = "0.0.0.0"
port = 4000
max_request_body_mb = 0.5
shutdown_timeout_secs = 12
sleep_on_shutdown = true
alive_interval_secs = 7.5
api_keys = ["sk-a", "sk-b"]
admin_token = "secret"

[policy]
name = "fifo"
request_timeout_secs = 60
drain_before_switch = false
min_active_secs = 3
drain_timeout_secs = 4
idle_sleep_secs = 900
max_queued_requests = 16

[groups.gpu1]

[models."Qwen/Qwen2.5-7B-Instruct"]
port = 8002
wake = "./wake qwen.sh"
sleep = "docker stop qwen"
alive = "curl -sf http://127.0.0.1:8002/health"
wake_timeout_secs = 900
sleep_timeout_secs = 30
alive_timeout_secs = 2.5
aliases = ["qwen", "qwen2.5"]
upstream_model = "qwen2.5:7b"
group = "gpu1"
"""
    config = parse(text)
    assert (config.host, config.port, config.max_request_body_mb) == ("0.0.0.0", 4000, 0.5)
    assert config.max_request_body_bytes == 512 * 1024
    assert (config.shutdown_timeout_secs, config.alive_interval_secs) == (12.0, 7.5)
    assert config.sleep_on_shutdown is True
    assert (config.api_keys, config.admin_token) == (("sk-a", "sk-b"), "secret")
    assert config.policy == PolicyConfig(
        name="fifo",
        request_timeout_secs=60.0,
        drain_before_switch=False,
        min_active_secs=3.0,
        drain_timeout_secs=4.0,
        idle_sleep_secs=900.0,
        max_queued_requests=16,
    )
    qwen = config.models["Qwen/Qwen2.5-7B-Instruct"]
    assert qwen == ModelConfig(
        id="Qwen/Qwen2.5-7B-Instruct",
        port=8002,
        wake="./wake qwen.sh",
        sleep="docker stop qwen",
        alive="curl -sf http://127.0.0.1:8002/health",
        wake_timeout_secs=900.0,
        sleep_timeout_secs=30.0,
        alive_timeout_secs=2.5,
        aliases=("qwen", "qwen2.5"),
        upstream_model="qwen2.5:7b",
        group="gpu1",
    )
    assert [qwen.hook(h) for h in ("wake", "sleep", "alive")] == [qwen.wake, qwen.sleep, qwen.alive]
    assert [qwen.timeout(h) for h in ("wake", "sleep", "alive")] == [900.0, 30.0, 2.5]


def test_quoted_ids_with_slash_and_dot() -> None:
    text = model('"Qwen/Qwen2.5-7B"', 8001) + model('"llama3.1"', 8002) + model("phi-3_mini", 8003)
    config = parse(text)
    assert list(config.models) == ["Qwen/Qwen2.5-7B", "llama3.1", "phi-3_mini"]
    assert [m.id for m in config.models.values()] == list(config.models)


def test_error_keys_are_quoted_like_toml() -> None:
    # Non-ASCII letters are not bare TOML keys, so the path quotes them.
    text = model('"modèle"', 8001) + model('"say \\"hi\\""', 8001)
    assert_error(text, 'models."say \\"hi\\"".port', "already used by model 'modèle'")
    assert_error(model('"modèle"', 0), 'models."modèle".port', "got 0")


def test_resolve_by_id_and_alias() -> None:
    text = model('"Qwen/Qwen2.5-7B"', 8001, 'aliases = ["qwen", "q"]\n') + model("llama", 8002)
    config = parse(text)
    qwen = config.models["Qwen/Qwen2.5-7B"]
    assert config.resolve("Qwen/Qwen2.5-7B") is qwen
    assert config.resolve("qwen") is qwen
    assert config.resolve("q") is qwen
    assert config.resolve("llama") is config.models["llama"]
    assert config.resolve("Qwen") is None
    assert config.resolve("") is None


def test_config_objects_are_frozen() -> None:
    config = parse(LLAMA)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]  # the point: assignment must fail
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.models["llama"].port = 1  # type: ignore[misc]  # likewise


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="models"):
        parse("")


def test_parse_without_base_dir_uses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config(LLAMA)
    assert (config.source, config.base_dir) == ("<string>", tmp_path)


# -- hook_warnings -------------------------------------------------------------------------


def write_script(path: Path, *, executable: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    mode = stat.S_IRWXU if executable else stat.S_IRUSR | stat.S_IWUSR
    path.chmod(mode)


def config_with_hooks(
    directory: Path, wake: str, sleep: str = "true", alive: str = "true"
) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / "llmux.toml"
    hooks = f"wake = {toml(wake)}\nsleep = {toml(sleep)}\nalive = {toml(alive)}\n"
    file.write_text(model('"m/1"', hooks=hooks))
    return load_config(file)


def toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_hook_warning_for_a_missing_script(tmp_path: Path) -> None:
    config = config_with_hooks(tmp_path / "conf", "./scripts/wake.sh --fast")
    assert hook_warnings(config) == [
        f'{config.source}: models."m/1".wake: ./scripts/wake.sh does not exist'
        f" (looked for {tmp_path / 'conf' / 'scripts' / 'wake.sh'})"
    ]


def test_hook_scripts_are_found_relative_to_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(tmp_path / "conf" / "scripts" / "wake.sh")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the scripts are
    config = config_with_hooks(tmp_path / "conf", "./scripts/wake.sh", sleep="scripts/wake.sh")
    assert hook_warnings(config) == []


@pytest.mark.parametrize(
    "command",
    [
        "curl -sf http://127.0.0.1:8001/health",
        "systemctl --user start vllm",
        "docker start qwen && ./scripts/../scripts/wait.sh",  # first word is docker
        "$HOME/bin/wake.sh",
        "`which wake`",
        "echo 'unbalanced",
        "true",
    ],
)
def test_no_hook_warning_for_inline_shell(tmp_path: Path, command: str) -> None:
    assert hook_warnings(config_with_hooks(tmp_path, command)) == []


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("CUDA_VISIBLE_DEVICES=0 ./missing.sh", "./missing.sh"),
        ("./missing.sh; echo done", "./missing.sh"),
        ("./missing.sh&", "./missing.sh"),
        ("/nonexistent/wake.sh", "/nonexistent/wake.sh"),
        ("'./with space.sh' arg", "./with space.sh"),
        ("~no-such-user-here/wake.sh", "~no-such-user-here/wake.sh"),
    ],
)
def test_hook_warning_finds_the_program(tmp_path: Path, command: str, program: str) -> None:
    warnings = hook_warnings(config_with_hooks(tmp_path, command))
    assert len(warnings) == 1
    assert f'models."m/1".wake: {program} does not exist' in warnings[0]


def test_hook_warning_for_a_script_that_is_not_executable(tmp_path: Path) -> None:
    write_script(tmp_path / "sleep.sh", executable=False)
    (tmp_path / "scripts").mkdir()
    config = config_with_hooks(tmp_path, "true", sleep="./sleep.sh", alive="./scripts")
    assert [w.split(": ", 2)[1:] for w in hook_warnings(config)] == [
        ['models."m/1".sleep', f"./sleep.sh is not executable (looked for {tmp_path}/sleep.sh)"],
        ['models."m/1".alive', f"./scripts is not a file (looked for {tmp_path}/scripts)"],
    ]


def test_hook_warning_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_script(tmp_path / "home" / "bin" / "wake.sh")
    config = config_with_hooks(tmp_path / "conf", "~/bin/wake.sh", sleep="~/bin/sleep.sh")
    assert hook_warnings(config) == [
        f'{config.source}: models."m/1".sleep: ~/bin/sleep.sh does not exist'
        f" (looked for {tmp_path}/home/bin/sleep.sh)"
    ]


# -- load_config ---------------------------------------------------------------------------


def test_load_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "llmux.toml").write_text(LLAMA)
    monkeypatch.chdir(tmp_path)
    config = load_config("llmux.toml")
    assert config.source == "llmux.toml"
    assert config.base_dir == tmp_path.resolve()
    assert config.base_dir.is_absolute()
    assert list(config.models) == ["llama"]


def test_load_config_reports_errors_with_the_path(tmp_path: Path) -> None:
    file = tmp_path / "llmux.toml"
    file.write_text(model(port=0))
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: models.llama.port: expected a whole number")


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert (info.value.source, info.value.key) == (str(missing), "")
    assert str(info.value) == f"{missing}: file not found (create one with `aiollmux init`)"


def test_load_config_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes('host = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: not valid UTF-8 (byte 11: ")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: not a regular file (a directory); refusing to read it"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            '[models.m]\nport = 8001\nwake = "a\\u0000b"\nsleep = "x"\nalive = "x"\n',
            "models.m.wake",
        ),
        ('[models."m\\u0000"]\nport = 8001\nwake = "x"\nsleep = "x"\nalive = "x"\n', "models"),
        (
            'api_keys = ["k\\u0000"]\n[models.m]\nport = 8001\nwake = "x"\nsleep = "x"\n'
            'alive = "x"\n',
            "api_keys[0]",
        ),
    ],
    ids=["hook", "model-id", "list-item"],
)
def test_a_nul_character_is_refused(text: str, key: str) -> None:
    # A hook could not be started with it (ValueError from exec, not an OSError).
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert info.value.key.startswith(key)
    assert "NUL" in str(info.value)
