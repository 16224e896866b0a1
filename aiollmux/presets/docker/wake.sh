#!/bin/sh
# aiollmux wake hook for a model server in a container: start it (or, with
# CONTAINER_SLEEP=checkpoint, restore its podman checkpoint) and exit 0 once HEALTH_PATH
# answers 200 on the published port. Settings: lib.sh and ../common.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${WAKE_TIMEOUT_SECS:-570}"

container_state
case $STATE in
    running) ;;
    paused)
        cli unpause "$MODEL_CONTAINER" || die "$CONTAINER_CLI unpause $MODEL_CONTAINER failed: $(one_line "$CLI_OUT")"
        ;;
    *)
        restored=no
        if [ "$CONTAINER_SLEEP" = checkpoint ] && container_checkpointed; then
            # shellcheck disable=SC2086  # CHECKPOINT_ARGS is a list of arguments
            if cli container restore $CHECKPOINT_ARGS "$MODEL_CONTAINER"; then
                restored=yes
            else
                # A checkpoint does not survive everything (a driver or kernel update, a reboot
                # with another GPU layout): start the container afresh instead.
                printf 'container: restore of %s failed, starting it instead: %s\n' \
                    "$MODEL_CONTAINER" "$(one_line "$CLI_OUT")" >&2
            fi
        fi
        if [ "$restored" = no ]; then
            cli start "$MODEL_CONTAINER" || die "$CONTAINER_CLI start $MODEL_CONTAINER failed: $(one_line "$CLI_OUT")"
        fi
        ;;
esac
wait_until "container $MODEL_CONTAINER to answer $HEALTH_PATH on port $LLMUX_PORT" container_ready
