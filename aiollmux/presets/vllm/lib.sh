# shellcheck shell=sh
# vLLM with sleep mode: settings and helpers shared by wake.sh, sleep.sh and alive.sh.
#
#   VLLM_BIN          the vllm executable (vllm)
#   VLLM_MODEL_PATH   what `vllm serve` loads ($LLMUX_MODEL: a Hugging Face id or a directory)
#   VLLM_ARGS         more arguments for `vllm serve`, split on blanks (e.g. "--max-model-len 8192")
#   VLLM_SLEEP_LEVEL  1 (weights to CPU RAM, fast wake), 2 (weights dropped, reloaded from disk
#                     on wake, little RAM) or stop (end the process: frees the CUDA context too)
#   VLLM_SLEEP_MODE   sent as /sleep?mode=… when set (recent vLLM: abort, wait or keep)
BACKEND=vllm
# shellcheck source=../common.sh
. "$(dirname "$0")/../common.sh"

VLLM_BIN=${VLLM_BIN:-vllm}
VLLM_MODEL_PATH=${VLLM_MODEL_PATH:-$LLMUX_MODEL}
VLLM_ARGS=${VLLM_ARGS:-}
VLLM_SLEEP_LEVEL=${VLLM_SLEEP_LEVEL:-1}
VLLM_SLEEP_MODE=${VLLM_SLEEP_MODE:-}
case $VLLM_SLEEP_LEVEL in
    1 | 2 | stop) ;;
    *) die "VLLM_SLEEP_LEVEL must be 1, 2 or stop, got '$VLLM_SLEEP_LEVEL'" ;;
esac
# The level the server was put to sleep with: a level-2 sleep needs the level-2 wake sequence.
LEVEL_FILE=$AIOLLMUX_RUN_DIR/vllm-$LLMUX_PORT.sleep-level

vllm_up() {
    http GET /health
    [ "$HTTP_STATUS" = 200 ]
}

# vllm_read_sleeping: SLEEPING=true|false from GET /is_sleeping.
vllm_read_sleeping() {
    http GET /is_sleeping
    [ "$HTTP_STATUS" != 404 ] || die "vLLM on port $LLMUX_PORT has no /is_sleeping: start it with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode"
    expect_ok "GET /is_sleeping"
    case $(compact "$HTTP_BODY") in
        *'"is_sleeping":true'*) SLEEPING=true ;;
        *'"is_sleeping":false'*) SLEEPING=false ;;
        *) die "GET /is_sleeping answered something unexpected: $(one_line "$HTTP_BODY")" ;;
    esac
}

vllm_asleep() {
    vllm_read_sleeping
    [ "$SLEEPING" = true ]
}

vllm_awake() {
    vllm_read_sleeping
    [ "$SLEEPING" = false ]
}
