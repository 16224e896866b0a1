#!/bin/sh
# aiollmux sleep hook for llama-server: SIGTERM the process group the wake hook started
# (SIGKILL after STOP_GRACE_SECS) and exit 0 only once every process of it has exited, which
# is when its GPU memory is free. Nothing running is success: sleeping twice is fine.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
deadline "${SLEEP_TIMEOUT_SECS:-110}"

stop_detached "llama-server"
http GET /health
[ "$HTTP_STATUS" = 000 ] || die "a server still answers on port $LLMUX_PORT ($(answered)) but none started by these hooks runs (no live process in $PIDFILE): stop it yourself"
