"""Unit-level checks of docs/design.md §5 pieces: rate-limited logs, path decoding, the new
configuration keys, `migrate`'s note about `proxy_paths`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from aiollmux.config import parse_config
from aiollmux.errors import ConfigError, InvalidRequest
from aiollmux.paths import decoded_path
from aiollmux.ratelimit import RateLimitedLog
from aiollmux.tools.migrate import migrate

MODEL = '[models.a]\nport = 8001\nwake = "true"\nsleep = "true"\nalive = "true"\n'


def test_rate_limited_log_counts_what_it_holds_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("aiollmux.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="aiollmux.test"):
        for step in range(25):  # one a second for 25 s
            now[0] = float(step)
            limited.log("emfile", logging.ERROR, "out of fds")
            limited.log("other", logging.ERROR, "another cause")
    emfile = [r for r in caplog.records if r.getMessage().startswith("out of fds")]
    assert [r.suppressed for r in emfile] == [0, 9, 9]  # type: ignore[attr-defined]
    assert "9 more like this in the last 10s not logged" in emfile[1].getMessage()
    assert len(caplog.records) == 6  # each cause on its own


@pytest.mark.parametrize(
    ("target", "path"),
    [("/v1/chat?x=/../y", "/v1/chat"), ("/%761/x", "/v1/x"), ("/a%2Fb", "/a/b"), ("/%zz", "/%zz")],
)
def test_decoded_path(target: str, path: str) -> None:
    assert decoded_path(target) == path


@pytest.mark.parametrize("target", ["/..", "/v1/../x", "/v1/%2E%2e/x", "/./v1", "/v1/%2e"])
def test_dot_segments(target: str) -> None:
    with pytest.raises(InvalidRequest):
        decoded_path(target)


def test_new_keys_parse_with_their_defaults() -> None:
    config = parse_config(MODEL)
    assert config.proxy_paths == ("/v1/",)
    assert config.models["a"].proxy_paths == ()
    assert (config.max_connections, config.backlog) == (2048, 2048)
    assert config.send_timeout_secs == config.client_header_timeout_secs == 60.0
    assert config.keepalive_timeout_secs == 75.0
    custom = parse_config('proxy_paths = ["/"]\nbacklog = 64\n' + MODEL + 'proxy_paths = ["/x"]\n')
    assert (custom.proxy_paths, custom.backlog, custom.models["a"].proxy_paths) == (
        ("/",),
        64,
        ("/x",),
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('proxy_paths = ["v1/"]\n' + MODEL, "proxy_paths[0]"),
        ('proxy_paths = ["/v1/", "/a/../b"]\n' + MODEL, "proxy_paths[1]"),
        ('proxy_paths = "/v1/"\n' + MODEL, "proxy_paths"),
        (MODEL + 'proxy_paths = ["/api?x"]\n', "models.a.proxy_paths[0]"),
        ("send_timeout_secs = 0\n" + MODEL, "send_timeout_secs"),
        ("max_connections = 0\n" + MODEL, "max_connections"),
        ("backlog = 70000\n" + MODEL, "backlog"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "llmux.toml")
    assert info.value.key == key


def test_migrate_says_how_to_forward_every_path(tmp_path: Path) -> None:
    source = tmp_path / "llmux.json"
    model = {"port": 8001, "wake": "true", "sleep": "true", "alive": "true"}
    source.write_text(json.dumps({"models": {"a": model}}))
    text, _ = migrate(source)
    assert '# proxy_paths = ["/"]' in text
    assert parse_config(text).proxy_paths == ("/v1/",)  # the comment changes nothing
