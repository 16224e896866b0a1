#!/bin/sh
# aiollmux sleep hook for SGLang: POST /release_memory_occupation (it returns once the weights
# and KV cache are freed) unless already released; with SGLANG_SLEEP=stop, or when the server
# does not answer (the clean-up after a failed wake), stop the process group the wake hook
# started and wait until all of it has exited.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${SLEEP_TIMEOUT_SECS:-110}"

if [ "$SGLANG_SLEEP" = stop ] || ! sglang_up; then
    stop_detached "SGLang"
    rm -f "$RELEASED_FILE"
    if sglang_up; then
        die "SGLang answers on port $LLMUX_PORT but was not started by these hooks (no live process in $PIDFILE): stop it yourself, or use SGLANG_SLEEP=release"
    fi
    exit 0
fi

sglang_released && exit 0
# Releasing while requests run fails inside SGLang's scheduler (which may take the server
# down): aiollmux drained the model before this hook.
http_long POST /release_memory_occupation '{}'
expect_ok "POST /release_memory_occupation"
run_dir
server_id >"$RELEASED_FILE" || die "cannot write $RELEASED_FILE"
