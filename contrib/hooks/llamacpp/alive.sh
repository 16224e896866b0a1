#!/bin/sh
# aiollmux alive hook for llama-server: healthy means /health answers 200 from the server
# these hooks started (its process holds the port).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${ALIVE_TIMEOUT_SECS:-5}"

llama_up || die "llama-server is not healthy on port $LLMUX_PORT (/health: $(answered))"
# Healthy, and ours: a server started by hand on the port is not this model.
own_server "llama-server"
