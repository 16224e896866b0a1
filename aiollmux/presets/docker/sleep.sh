#!/bin/sh
# aiollmux sleep hook for a model server in a container: stop it (docker/podman stop waits for
# its processes to exit, SIGKILL after STOP_GRACE_SECS) or, with CONTAINER_SLEEP=checkpoint,
# checkpoint it with podman and CRIU; exit 0 once the container no longer runs.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${SLEEP_TIMEOUT_SECS:-110}"

container_state
case $STATE in
    running | paused | restarting)
        if [ "$CONTAINER_SLEEP" = checkpoint ]; then
            # shellcheck disable=SC2086  # CHECKPOINT_ARGS is a list of arguments
            cli container checkpoint $CHECKPOINT_ARGS "$MODEL_CONTAINER" ||
                die "podman container checkpoint $MODEL_CONTAINER failed: $(one_line "$CLI_OUT")"
        else
            cli stop -t "$STOP_GRACE_SECS" "$MODEL_CONTAINER" ||
                die "$CONTAINER_CLI stop $MODEL_CONTAINER failed: $(one_line "$CLI_OUT")"
        fi
        ;;
esac
wait_until "container $MODEL_CONTAINER to stop" container_stopped
