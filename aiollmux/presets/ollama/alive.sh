#!/bin/sh
# aiollmux alive hook for Ollama: healthy means the server answers and /api/ps lists
# OLLAMA_MODEL (with OLLAMA_ALL_MODELS=1: the server answers).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${ALIVE_TIMEOUT_SECS:-5}"

ollama_up || die "Ollama is not answering at $BACKEND_URL ($(answered))"
[ "$OLLAMA_ALL_MODELS" = 1 ] && exit 0
ollama_loaded || die "$OLLAMA_TAG is not loaded (not in /api/ps)"
