#!/bin/sh
# aiollmux wake hook for SGLang: start the server if none answers (detached, with
# --enable-memory-saver and --enable-weights-cpu-backup, without which a resumed model
# answers garbage), resume its memory if sleep.sh released it, and exit 0 once /health
# answers 200. Settings: lib.sh and ../common.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${WAKE_TIMEOUT_SECS:-570}"

if ! sglang_up; then
    if ! pid_alive "$(read_pid)"; then
        [ "$HTTP_STATUS" = 000 ] || die "port $LLMUX_PORT answers /v1/models with HTTP $HTTP_STATUS but no SGLang started by these hooks runs: is another program on that port?"
        need "$SGLANG_PYTHON" "set SGLANG_PYTHON to the python that has sglang installed"
        rm -f "$RELEASED_FILE"
        # shellcheck disable=SC2086  # SGLANG_ARGS is a list of arguments
        start_detached "$SGLANG_PYTHON" -m sglang.launch_server --model-path "$SGLANG_MODEL_PATH" \
            --host 127.0.0.1 --port "$LLMUX_PORT" --enable-memory-saver \
            --enable-weights-cpu-backup $SGLANG_ARGS
    fi
    wait_started "SGLang ($SGLANG_MODEL_PATH)" sglang_up
fi
# The server must be ours, or (run as a service) serve this model: not another model's.
own_or_serving "SGLang" "$SGLANG_MODEL_PATH" "$LLMUX_MODEL"

if sglang_released; then
    http_long POST /resume_memory_occupation '{}'
    expect_ok "POST /resume_memory_occupation"
    rm -f "$RELEASED_FILE"
fi
wait_until "SGLang on port $LLMUX_PORT to answer /health" sglang_ready
