# shellcheck shell=sh
# llama.cpp's llama-server as a process the hooks start and stop: settings and helpers shared
# by wake.sh, sleep.sh and alive.sh. llama-server has no sleep mode: sleeping is stopping.
#
#   LLAMA_SERVER_BIN  the llama-server executable (llama-server)
#   LLAMA_MODEL_PATH  the .gguf file, passed as -m (or give the model in LLAMA_ARGS, e.g. -hf)
#   LLAMA_ARGS        more arguments, split on blanks (e.g. "-ngl 99 -c 16384 --jinja")
BACKEND=llamacpp
# shellcheck source=../common.sh
. "$(dirname "$0")/../common.sh"

LLAMA_SERVER_BIN=${LLAMA_SERVER_BIN:-llama-server}
LLAMA_MODEL_PATH=${LLAMA_MODEL_PATH:-}
LLAMA_ARGS=${LLAMA_ARGS:-}

# llama_up: /health answers 200 (it answers 503 while the model is loading).
llama_up() {
    http GET /health
    [ "$HTTP_STATUS" = 200 ]
}
