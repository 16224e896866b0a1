#!/bin/sh
# aiollmux sleep hook for Ollama: unload OLLAMA_MODEL (keep_alive 0; with OLLAMA_ALL_MODELS=1
# every loaded model) and exit 0 once /api/ps no longer lists it: Ollama answers the unload
# request at once and frees the memory afterwards, so the answer alone proves nothing.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${SLEEP_TIMEOUT_SECS:-110}"

if ! ollama_up; then
    # Nothing answers, so nothing of it is loaded; a hung `ollama serve` we started is stopped.
    stop_detached "ollama serve"
    exit 0
fi

if [ "$OLLAMA_ALL_MODELS" = 1 ]; then
    ollama_ps
    names=$(printf '%s' "$PS" | tr '{' ',' | tr ',' '\n' | sed -n 's/^"name":"\(.*\)"$/\1/p')
    for name in $names; do
        ollama_keep_alive "$name" 0
        expect_ok "unloading $name (POST /api/generate)"
    done
    wait_until "Ollama to unload every model (/api/ps)" ollama_none_loaded
    exit 0
fi

ollama_keep_alive "$OLLAMA_MODEL" 0
# 404: Ollama does not have the model at all, so it is not loaded either.
[ "$HTTP_STATUS" = 404 ] || expect_ok "unloading $OLLAMA_MODEL (POST /api/generate)"
wait_until "Ollama to unload $OLLAMA_TAG (/api/ps)" ollama_unloaded
