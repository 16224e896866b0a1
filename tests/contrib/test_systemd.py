"""contrib/systemd/aiollmux.service: the keys the daemon relies on, and systemd's own verdict."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from aiollmux.config import Config
from aiollmux.hooks import KILL_GRACE_SECS
from tests.contrib.conftest import REPO

UNIT = REPO / "contrib" / "systemd" / "aiollmux.service"


def service_section() -> configparser.SectionProxy:
    # strict=False: systemd allows a key more than once (Environment=); the last one wins here.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    return parser["Service"]


def environment() -> dict[str, str]:
    pairs = re.findall(r"(?m)^Environment=(\w+)=(.*)$", UNIT.read_text())
    return dict(pairs)


def test_unit_has_the_keys_the_daemon_relies_on() -> None:
    print("check: configparser reading of", UNIT)
    service = service_section()
    assert service["Type"] == "notify"  # aiollmux sends READY=1, RELOADING=1, STOPPING=1
    assert service["NotifyAccess"] == "main"
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "aiollmux"
    assert command[1:4] == ["run", "-c", "/etc/aiollmux/llmux.toml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the config
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # an invalid config: `aiollmux run` exit 2
    # SIGTERM to aiollmux alone, so model servers live while in-flight responses drain; the
    # rest of the cgroup (hook-started servers) is killed once the daemon has exited.
    assert service["KillMode"] == "mixed"
    drain_and_kill = Config().shutdown_timeout_secs + KILL_GRACE_SECS
    assert float(service["TimeoutStopSec"]) > drain_and_kill
    # Room for max_connections (default 2048) plus the 64 fds kept for hooks and upstreams.
    assert int(service["LimitNOFILE"]) >= Config().max_connections + 64


def test_unit_is_hardened_without_hiding_the_gpu() -> None:
    service = service_section()
    assert service["User"] not in ("", "root")
    assert "DynamicUser" not in service
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
    }
    assert {key: service.get(key) for key in expected} == expected
    for forbidden in ("PrivateDevices", "MemoryDenyWriteExecute", "DevicePolicy"):
        assert forbidden not in service, f"{forbidden} would keep the GPU or CUDA from working"
    # The hooks' pidfiles and server logs go where ProtectSystem=strict still allows writes.
    assert environment()["AIOLLMUX_RUN_DIR"] == f"/run/{service['RuntimeDirectory']}"
    assert environment()["HF_HOME"].startswith(f"/var/cache/{service['CacheDirectory']}/")


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Not a skip: the configparser checks above ran; say which check this was.
        print("check: systemd-analyze is not installed; the configparser checks stand alone")
        assert service_section()["Type"] == "notify"
        return
    print("check: systemd-analyze verify")
    # verify wants ExecStart's program to exist: point it at this installation's aiollmux.
    installed = Path(sys.executable).parent / "aiollmux"
    assert installed.exists()
    unit = tmp_path / "aiollmux.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/aiollmux", str(installed)))
    checked = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys or values it ignores: any output is a finding.
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
