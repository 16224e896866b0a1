#!/bin/sh
# aiollmux wake hook for vLLM with sleep mode. No server on the port: start one (detached,
# VLLM_SERVER_DEV_MODE=1, --enable-sleep-mode) and wait for /health. A server asleep: wake it
# (level 1: POST /wake_up; level 2: weights, reload_weights, KV cache). Exit 0 once
# /is_sleeping says false. Settings: lib.sh and ../common.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${WAKE_TIMEOUT_SECS:-570}"

if ! vllm_up; then
    # No live pid means no start in progress (one may be, after a wake that timed out).
    if ! pid_alive "$(read_pid)"; then
        [ "$HTTP_STATUS" = 000 ] || die "port $LLMUX_PORT answers /health with HTTP $HTTP_STATUS but no vLLM started by these hooks runs: is another program on that port?"
        need "$VLLM_BIN" "set VLLM_BIN to the vllm executable, e.g. /opt/vllm/bin/vllm"
        rm -f "$LEVEL_FILE"
        export VLLM_SERVER_DEV_MODE=1 # serves /sleep, /wake_up, /is_sleeping, /collective_rpc
        # shellcheck disable=SC2086  # VLLM_ARGS is a list of arguments
        start_detached "$VLLM_BIN" serve "$VLLM_MODEL_PATH" --host 127.0.0.1 \
            --port "$LLMUX_PORT" --enable-sleep-mode $VLLM_ARGS
    fi
    wait_started "vLLM ($VLLM_MODEL_PATH)" vllm_up
fi
# The server must be ours, or (run as a service) serve this model: not another model's.
own_or_serving "vLLM" "$VLLM_MODEL_PATH" "$LLMUX_MODEL"

vllm_read_sleeping
if [ "$SLEEPING" = true ]; then
    level=$(cat "$LEVEL_FILE" 2>/dev/null)
    if [ "${level:-$VLLM_SLEEP_LEVEL}" = 2 ]; then
        # Level 2 dropped the weights: allocate them, load them from disk in place, then
        # allocate the KV cache (after the weights, so the two never peak together).
        http_long POST '/wake_up?tags=weights'
        expect_ok "POST /wake_up?tags=weights"
        http_long POST /collective_rpc '{"method":"reload_weights"}'
        expect_ok "POST /collective_rpc reload_weights"
        http_long POST '/wake_up?tags=kv_cache'
        expect_ok "POST /wake_up?tags=kv_cache"
    else
        http_long POST /wake_up
        expect_ok "POST /wake_up"
    fi
fi
wait_until "vLLM on port $LLMUX_PORT to report is_sleeping=false" vllm_awake
rm -f "$LEVEL_FILE"
