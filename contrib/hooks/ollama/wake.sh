#!/bin/sh
# aiollmux wake hook for Ollama: load OLLAMA_MODEL with keep_alive -1 (POST /api/generate
# with no prompt) and exit 0 once /api/ps lists it. Settings: lib.sh and ../common.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${WAKE_TIMEOUT_SECS:-570}"

if ! ollama_up; then
    [ "$OLLAMA_START" = 1 ] || die "Ollama is not answering at $BACKEND_URL ($(answered)): run 'OLLAMA_HOST=127.0.0.1:$LLMUX_PORT ollama serve' (as a service), or set OLLAMA_START=1"
    if ! pid_alive "$(read_pid)"; then
        [ "$HTTP_STATUS" = 000 ] || die "port $LLMUX_PORT answers /api/version with HTTP $HTTP_STATUS: is another program on that port?"
        need "$OLLAMA_BIN" "set OLLAMA_BIN to the ollama executable"
        OLLAMA_HOST=127.0.0.1:$LLMUX_PORT
        export OLLAMA_HOST
        start_detached "$OLLAMA_BIN" serve
    fi
    wait_started "ollama serve" ollama_up
fi
# An `ollama serve` these hooks started must be the one answering (not another program).
! pid_alive "$(read_pid)" || own_server "ollama serve"

[ "$OLLAMA_ALL_MODELS" = 1 ] && exit 0
ollama_keep_alive "$OLLAMA_MODEL" -1
expect_ok "loading $OLLAMA_MODEL (POST /api/generate)"
wait_until "Ollama to list $OLLAMA_TAG in /api/ps" ollama_loaded
