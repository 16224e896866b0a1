#!/bin/sh
# aiollmux alive hook for a model server in a container: healthy means the container runs and
# HEALTH_PATH answers 200 on the published port.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${ALIVE_TIMEOUT_SECS:-5}"

container_state
[ "$STATE" = running ] || die "container $MODEL_CONTAINER is $STATE"
http GET "$HEALTH_PATH"
[ "$HTTP_STATUS" = 200 ] || die "container $MODEL_CONTAINER is not healthy on port $LLMUX_PORT ($HEALTH_PATH: $(answered))"
