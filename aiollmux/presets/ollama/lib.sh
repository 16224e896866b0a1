# shellcheck shell=sh
# Ollama: load a model with keep_alive -1 (stay until told), unload it with keep_alive 0 and
# watch /api/ps until it is gone. Settings and helpers shared by wake.sh, sleep.sh, alive.sh.
#
#   OLLAMA_MODEL       the Ollama tag to load ($LLMUX_MODEL); match `upstream_model` if you
#                      set one, e.g. qwen3:8b
#   OLLAMA_ALL_MODELS  1: this aiollmux model stands for the whole Ollama server (clients send
#                      Ollama tags as aliases): wake only checks the server, sleep unloads
#                      every loaded model
#   OLLAMA_START       1: if nothing answers on the port, wake starts `ollama serve` there
#                      (OLLAMA_HOST=127.0.0.1:$LLMUX_PORT); default: Ollama runs on its own
#   OLLAMA_BIN         the ollama executable, for OLLAMA_START (ollama)
BACKEND=ollama
# shellcheck source=../common.sh
. "$(dirname "$0")/../common.sh"

OLLAMA_MODEL=${OLLAMA_MODEL:-$LLMUX_MODEL}
OLLAMA_ALL_MODELS=${OLLAMA_ALL_MODELS:-0}
OLLAMA_START=${OLLAMA_START:-0}
OLLAMA_BIN=${OLLAMA_BIN:-ollama}
# /api/ps names models short and with their tag: "qwen3" and "library/qwen3" are listed as
# "qwen3:latest", "registry.ollama.ai/library/qwen3:8b" as "qwen3:8b".
_short=${OLLAMA_MODEL#registry.ollama.ai/}
_short=${_short#library/}
case $_short in
    *:*) OLLAMA_TAG=$_short ;;
    *) OLLAMA_TAG=$_short:latest ;;
esac

ollama_up() {
    http GET /api/version
    [ "$HTTP_STATUS" = 200 ]
}

# ollama_ps: the body of GET /api/ps without blanks, in PS.
ollama_ps() {
    http GET /api/ps
    expect_ok "GET /api/ps"
    PS=$(compact "$HTTP_BODY")
}

ollama_loaded() {
    ollama_ps
    case $PS in
        *"\"name\":\"$OLLAMA_TAG\""* | *"\"model\":\"$OLLAMA_TAG\""*) return 0 ;;
        *) return 1 ;;
    esac
}

ollama_unloaded() {
    ! ollama_loaded
}

ollama_none_loaded() {
    ollama_ps
    case $PS in
        *'"models":[]'* | *'"models":null'*) return 0 ;;
        *) return 1 ;;
    esac
}

# ollama_keep_alive MODEL SECONDS: POST /api/generate with no prompt: -1 loads the model and
# keeps it, 0 unloads it.
ollama_keep_alive() {
    http_long POST /api/generate "{\"model\":$(json_string "$1"),\"keep_alive\":$2}"
}
