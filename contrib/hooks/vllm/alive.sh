#!/bin/sh
# aiollmux alive hook for vLLM with sleep mode: healthy means /health answers 200 and
# /is_sleeping says false (a sleeping server answers /health but cannot serve).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${ALIVE_TIMEOUT_SECS:-5}"

vllm_up || die "vLLM is not healthy on port $LLMUX_PORT (/health: $(answered))"
vllm_read_sleeping
[ "$SLEEPING" = false ] || die "vLLM on port $LLMUX_PORT is asleep"
# Healthy, and ours: a server started by hand on the port is not this model.
own_or_serving "vLLM" "$VLLM_MODEL_PATH" "$LLMUX_MODEL"
