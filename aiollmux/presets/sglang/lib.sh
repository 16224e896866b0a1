# shellcheck shell=sh
# SGLang with its memory saver: release and resume the GPU memory of a running server
# (POST /release_memory_occupation, /resume_memory_occupation). Settings and helpers shared by
# wake.sh, sleep.sh and alive.sh.
#
#   SGLANG_PYTHON      the Python that has sglang installed (python3)
#   SGLANG_MODEL_PATH  --model-path ($LLMUX_MODEL: a Hugging Face id or a directory)
#   SGLANG_ARGS        more arguments for sglang.launch_server, split on blanks
#   SGLANG_SLEEP       release (keep the process, free weights and KV cache) or stop (end it)
#
# SGLang has no endpoint that says whether the memory is released, and releasing twice is an
# error, so sleep.sh records a release in RELEASED_FILE (with the pid of the server it
# released, so a restarted server is not mistaken for a released one).
BACKEND=sglang
# shellcheck source=../common.sh
. "$(dirname "$0")/../common.sh"

SGLANG_PYTHON=${SGLANG_PYTHON:-python3}
SGLANG_MODEL_PATH=${SGLANG_MODEL_PATH:-$LLMUX_MODEL}
SGLANG_ARGS=${SGLANG_ARGS:-}
SGLANG_SLEEP=${SGLANG_SLEEP:-release}
case $SGLANG_SLEEP in
    release | stop) ;;
    *) die "SGLANG_SLEEP must be release or stop, got '$SGLANG_SLEEP'" ;;
esac
RELEASED_FILE=$AIOLLMUX_RUN_DIR/sglang-$LLMUX_PORT.released

# sglang_up: the HTTP server answers (GET /v1/models works whether or not memory is released).
sglang_up() {
    http GET /v1/models
    [ "$HTTP_STATUS" = 200 ]
}

# sglang_ready: GET /health answers 200: the model is loaded, warmed up and holds its memory.
sglang_ready() {
    http GET /health
    [ "$HTTP_STATUS" = 200 ]
}

# server_id: the pid of the server the hooks started, or "external" for one run otherwise.
server_id() {
    _id=$(read_pid)
    echo "${_id:-external}"
}

sglang_released() {
    [ -f "$RELEASED_FILE" ] || return 1
    { read -r _released <"$RELEASED_FILE"; } 2>/dev/null
    [ "$_released" = "$(server_id)" ] && return 0
    rm -f "$RELEASED_FILE" # recorded for a server that is gone
    return 1
}
