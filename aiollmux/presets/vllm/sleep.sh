#!/bin/sh
# aiollmux sleep hook for vLLM with sleep mode: POST /sleep?level=N and wait until
# /is_sleeping says true. With VLLM_SLEEP_LEVEL=stop, or when the server does not answer
# (a start that never finished: the clean-up after a failed wake), stop the process group
# the wake hook started and wait until every process of it has exited.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${SLEEP_TIMEOUT_SECS:-110}"

if [ "$VLLM_SLEEP_LEVEL" = stop ] || ! vllm_up; then
    stop_detached "vLLM"
    if vllm_up; then
        die "vLLM answers on port $LLMUX_PORT but was not started by these hooks (no live process in $PIDFILE): stop it yourself, or use VLLM_SLEEP_LEVEL=1 or 2"
    fi
    exit 0
fi

vllm_read_sleeping
if [ "$SLEEPING" = false ]; then
    query="level=$VLLM_SLEEP_LEVEL${VLLM_SLEEP_MODE:+&mode=$VLLM_SLEEP_MODE}"
    run_dir
    echo "$VLLM_SLEEP_LEVEL" >"$LEVEL_FILE" || die "cannot write $LEVEL_FILE"
    # vLLM aborts requests still running (mode=abort, its default): aiollmux drains the model
    # first (drain_before_switch), so there are none unless drain_timeout_secs cut them.
    http_long POST "/sleep?$query"
    expect_ok "POST /sleep?$query"
fi
wait_until "vLLM on port $LLMUX_PORT to report is_sleeping=true" vllm_asleep
