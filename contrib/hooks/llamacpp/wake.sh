#!/bin/sh
# aiollmux wake hook for llama-server: start it detached (own session, output to a log,
# pid in a pidfile) unless it already runs, and exit 0 once /health answers 200 from that
# server (its process holds the port: a server started by hand there is refused).
# Settings: lib.sh and ../common.sh.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${WAKE_TIMEOUT_SECS:-570}"

if llama_up; then
    # Healthy, but whose? A server started by hand on this port may serve another model.
    own_server "llama-server"
    exit 0
fi
# A live pid means a start is in progress (after a wake that timed out): wait for it.
if ! pid_alive "$(read_pid)"; then
    [ "$HTTP_STATUS" = 000 ] || die "port $LLMUX_PORT answers /health with HTTP $HTTP_STATUS but no llama-server started by these hooks runs: is another program on that port?"
    [ -n "$LLAMA_MODEL_PATH$LLAMA_ARGS" ] || die "set LLAMA_MODEL_PATH to the .gguf file (or LLAMA_ARGS, e.g. '-hf ggml-org/gemma-3-1b-it-GGUF')"
    [ -z "$LLAMA_MODEL_PATH" ] || [ -r "$LLAMA_MODEL_PATH" ] || die "model file not found: $LLAMA_MODEL_PATH (LLAMA_MODEL_PATH, relative to $(pwd))"
    need "$LLAMA_SERVER_BIN" "set LLAMA_SERVER_BIN to the llama-server executable"
    set -- "$LLAMA_SERVER_BIN" --host 127.0.0.1 --port "$LLMUX_PORT"
    [ -z "$LLAMA_MODEL_PATH" ] || set -- "$@" -m "$LLAMA_MODEL_PATH"
    # shellcheck disable=SC2086  # LLAMA_ARGS is a list of arguments
    start_detached "$@" $LLAMA_ARGS
fi
wait_started "llama-server" llama_up
own_server "llama-server"
