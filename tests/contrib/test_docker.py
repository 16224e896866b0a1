"""contrib/hooks/docker against fake `docker`/`podman` CLIs that run a fake server per container."""

from __future__ import annotations

import json

from tests.contrib.conftest import HookLab
from tests.contrib.fake_containers import process_alive

NAME = "llm-test"


def create_container(lab: HookLab) -> None:
    """What `docker create --name llm-test -p 127.0.0.1:PORT:8080 …` leaves behind."""
    container = {"port": lab.port, "status": "created", "pid": None, "checkpointed": False}
    (lab.state_dir / "containers.json").write_text(json.dumps({NAME: container}))


def container(lab: HookLab) -> dict[str, object]:
    state: dict[str, object] = json.loads((lab.state_dir / "containers.json").read_text())[NAME]
    return state


def cli_calls(lab: HookLab) -> list[str]:
    return [
        line
        for line in (lab.state_dir / "cli.log").read_text().splitlines()
        if " inspect " not in f" {line} "
    ]


def test_docker_cycle_waits_for_health_and_for_the_stop(hook_lab: HookLab) -> None:
    lab = hook_lab
    create_container(lab)
    name = {"MODEL_CONTAINER": NAME}
    lab.ok("docker", "wake", **name)
    assert lab.get("/health")[0] == 200  # docker start returned before that: the hook waited
    server = container(lab)["pid"]
    assert isinstance(server, int)
    lab.ok("docker", "alive", **name)
    lab.ok("docker", "wake", **name)  # running: no second start

    lab.ok("docker", "sleep", **name)
    assert container(lab)["status"] == "exited"
    assert not process_alive(server)
    assert lab.fails("docker", "alive", **name) == f"container: container {NAME} is exited"
    lab.ok("docker", "sleep", **name)  # stopped already: no second stop
    assert cli_calls(lab) == [f"docker start {NAME}", f"docker stop -t 5 {NAME}"]


def test_podman_checkpoint_restore_and_the_fallback_to_a_fresh_start(hook_lab: HookLab) -> None:
    lab = hook_lab
    create_container(lab)
    podman = {"MODEL_CONTAINER": NAME, "CONTAINER_CLI": "podman", "CONTAINER_SLEEP": "checkpoint"}
    lab.ok("docker", "wake", **podman)
    lab.ok("docker", "sleep", **podman)
    assert container(lab)["checkpointed"] is True
    assert not lab.port_answers()
    lab.ok("docker", "wake", **podman)
    lab.ok("docker", "alive", **podman)
    assert cli_calls(lab) == [
        f"podman start {NAME}",
        f"podman container checkpoint --tcp-established {NAME}",
        f"podman container restore --tcp-established {NAME}",
    ]
    # A checkpoint that cannot be restored (after a driver update, say): start afresh.
    lab.ok("docker", "sleep", **podman)
    result = lab.ok("docker", "wake", FAKE_RESTORE_FAIL="1", **podman)
    assert result.stderr == (
        f"container: restore of {NAME} failed, starting it instead:"
        " Error: CRIU restore failed: cuda-checkpoint: no such device\n"
    )
    lab.ok("docker", "alive", **podman)
    assert cli_calls(lab)[-2:] == [
        f"podman container restore --tcp-established {NAME}",
        f"podman start {NAME}",
    ]


def test_failures_are_one_clear_line(hook_lab: HookLab) -> None:
    lab = hook_lab
    create_container(lab)
    lab.model = "org/Some Model"  # no container of the derived name "org-Some-Model"
    assert lab.fails("docker", "wake") == (
        "container: no container org-Some-Model (Error: no such container: org-Some-Model):"
        " create it first, see contrib/hooks/docker/README.md"
    )
    assert lab.fails("docker", "sleep", MODEL_CONTAINER=NAME, CONTAINER_SLEEP="checkpoint") == (
        "container: CONTAINER_SLEEP=checkpoint needs CONTAINER_CLI=podman"
        " (docker's checkpoint support is experimental and not used here)"
    )
    line = lab.fails("docker", "wake", MODEL_CONTAINER=NAME, FAKE_CRASH="1")
    assert line == (
        f"container: container {NAME} is exited while starting"
        " (last log line: error: failed to load model: out of memory)"
    )
    line = lab.fails(
        "docker", "wake", MODEL_CONTAINER=NAME, FAKE_LOAD_SECS="30", WAKE_TIMEOUT_SECS="1"
    )
    assert line == (
        f"container: timed out after 1s waiting for container {NAME} to answer /health"
        f" on port {lab.port}"
    )
