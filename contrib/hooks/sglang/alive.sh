#!/bin/sh
# aiollmux alive hook for SGLang: healthy means /health answers 200 and the memory is not
# released.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${ALIVE_TIMEOUT_SECS:-5}"

# The marker first: /health generates a token, which a released server cannot do.
sglang_released && die "SGLang on port $LLMUX_PORT has released its memory (asleep)"
sglang_ready || die "SGLang is not healthy on port $LLMUX_PORT (/health: $(answered))"
# Healthy, and ours: a server started by hand on the port is not this model.
own_or_serving "SGLang" "$SGLANG_MODEL_PATH" "$LLMUX_MODEL"
exit 0
