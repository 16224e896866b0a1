# shellcheck shell=sh
# A model server in a container you created once (docker create / podman create, see
# README.md): wake starts it, sleep stops it. With podman and CRIU, sleep can checkpoint the
# container instead and wake restore it. Settings and helpers shared by wake.sh, sleep.sh and
# alive.sh.
#
#   CONTAINER_CLI     docker or podman (docker); any command that takes their arguments
#   MODEL_CONTAINER   the container ($LLMUX_MODEL with characters other than [A-Za-z0-9_.-]
#                     turned into '-')
#   CONTAINER_SLEEP   stop (docker/podman stop) or checkpoint (podman container checkpoint)
#   CHECKPOINT_ARGS   extra arguments for checkpoint and restore (--tcp-established: aiollmux
#                     keeps idle keep-alive connections to the backend, which CRIU refuses to
#                     checkpoint without it)
#   HEALTH_PATH       the server's readiness path inside the container (/health)
BACKEND=container
# shellcheck source=../common.sh
. "$(dirname "$0")/../common.sh"

CONTAINER_CLI=${CONTAINER_CLI:-docker}
MODEL_CONTAINER=${MODEL_CONTAINER:-$(printf '%s' "$LLMUX_MODEL" | tr -c 'A-Za-z0-9_.-' '-')}
CONTAINER_SLEEP=${CONTAINER_SLEEP:-stop}
CHECKPOINT_ARGS=${CHECKPOINT_ARGS---tcp-established}
HEALTH_PATH=${HEALTH_PATH:-/health}
need "$CONTAINER_CLI" "set CONTAINER_CLI to docker or podman"
case $CONTAINER_SLEEP in
    stop) ;;
    checkpoint)
        case ${CONTAINER_CLI##*/} in
            podman*) ;;
            *) die "CONTAINER_SLEEP=checkpoint needs CONTAINER_CLI=podman (docker's checkpoint support is experimental and not used here)" ;;
        esac
        ;;
    *) die "CONTAINER_SLEEP must be stop or checkpoint, got '$CONTAINER_SLEEP'" ;;
esac

# cli ARG...: run the container CLI; its output (stdout and stderr) in CLI_OUT.
cli() {
    CLI_OUT=$("$CONTAINER_CLI" "$@" 2>&1)
}

# container_state: STATE = running, exited, created, paused, restarting, ... (dies if there is
# no such container).
container_state() {
    cli container inspect -f '{{.State.Status}}' "$MODEL_CONTAINER" ||
        die "no container $MODEL_CONTAINER ($(one_line "$CLI_OUT")): create it first, see contrib/hooks/docker/README.md"
    STATE=$CLI_OUT
}

container_checkpointed() {
    cli container inspect -f '{{.State.Checkpointed}}' "$MODEL_CONTAINER" && [ "$CLI_OUT" = true ]
}

container_ready() {
    container_state
    case $STATE in
        running) ;;
        created | restarting | configured) return 1 ;;
        *)
            cli logs --tail 1 "$MODEL_CONTAINER"
            die "container $MODEL_CONTAINER is $STATE while starting (last log line: $(one_line "$CLI_OUT"))"
            ;;
    esac
    http GET "$HEALTH_PATH"
    [ "$HTTP_STATUS" = 200 ]
}

container_stopped() {
    container_state
    case $STATE in
        running | paused | restarting | stopping) return 1 ;;
        *) return 0 ;;
    esac
}
