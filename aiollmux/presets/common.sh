# shellcheck shell=sh
# Shared by the hook sets in contrib/hooks/*/, sourced as `. "$(dirname "$0")/../common.sh"`
# after setting BACKEND. POSIX sh and curl only.
#
# The rules every hook here follows (docs/hooks.md): wait for the real state by polling
# with a deadline, never a fixed sleep; be idempotent; on failure print ONE line on
# stderr (aiollmux shows it to the client whose request needed the model) and exit 1.
#
# Settings (environment variables, all optional):
#   WAKE_TIMEOUT_SECS   deadline of a wake hook (570; keep it below wake_timeout_secs so the
#                       hook reports what it was waiting for before aiollmux kills it)
#   SLEEP_TIMEOUT_SECS  deadline of a sleep hook (110; below sleep_timeout_secs)
#   ALIVE_TIMEOUT_SECS  deadline of an alive hook (5; below alive_timeout_secs)
#   POLL_SECS           longest pause between two polls (1): polls are 50 ms apart for the
#                       first second, then back off, doubling up to this (fractions work
#                       with GNU/busybox sleep)
#   REQUEST_TIMEOUT_SECS  longest single status request (10; loads and sleeps may take until
#                       the deadline)
#   STOP_GRACE_SECS     SIGTERM to SIGKILL, for servers the hooks started (30)
#   AIOLLMUX_RUN_DIR    pidfiles and server logs (aiollmux-hooks-<uid> in $XDG_RUNTIME_DIR,
#                       else in $TMPDIR or /tmp); must belong to the hooks' user
#   BACKEND_URL         where the backend answers (http://127.0.0.1:$LLMUX_PORT, where aiollmux
#                       sends the model's requests)

NL='
'

die() {
    printf '%s: %s\n' "${BACKEND:-hook}" "$*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH${2:+ ($2)}"
}

need curl "install curl on this machine: the hooks use it to talk to the backend"
[ -n "${LLMUX_PORT:-}" ] || die "LLMUX_PORT is not set: run this as an aiollmux hook (or export LLMUX_PORT and LLMUX_MODEL)"
[ -n "${LLMUX_MODEL:-}" ] || die "LLMUX_MODEL is not set: run this as an aiollmux hook (or export LLMUX_PORT and LLMUX_MODEL)"
case $LLMUX_PORT in *[!0-9]*) die "LLMUX_PORT is not a port number: $LLMUX_PORT" ;; esac

POLL_SECS=${POLL_SECS:-1}
STOP_GRACE_SECS=${STOP_GRACE_SECS:-30}
REQUEST_TIMEOUT_SECS=${REQUEST_TIMEOUT_SECS:-10}
BACKEND_URL=${BACKEND_URL:-http://127.0.0.1:$LLMUX_PORT}
AIOLLMUX_RUN_DIR=${AIOLLMUX_RUN_DIR:-${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/aiollmux-hooks-$(id -u)}
# One pidfile and one log per backend and port: ports are unique per model, ids may hold '/'.
PIDFILE=$AIOLLMUX_RUN_DIR/$BACKEND-$LLMUX_PORT.pid
LOGFILE=$AIOLLMUX_RUN_DIR/$BACKEND-$LLMUX_PORT.log

# Time is counted in hundredths of a second (integers: sh has no fractions), from
# /proc/uptime where there is one (monotonic, 10 ms steps), else from `date +%s`.

# to_centis SECONDS: "2", "0.05" or "1.5" seconds in hundredths, in CENTIS; fails (1) if not
# a number. (Variables, not output: every $(...) forks, and hooks should start fast.)
to_centis() {
    case $1 in '' | . | *[!0-9.]* | *.*.*) return 1 ;; esac
    _frac=
    case $1 in *.*) _frac=${1#*.} ;; esac
    _frac=${_frac}00
    strip_zeros "${_frac%"${_frac#??}"}"
    _hundredths=$_digits
    strip_zeros "${1%%.*}"
    CENTIS=$((_digits * 100 + _hundredths))
}

# centis SECONDS: to_centis, printed.
centis() {
    to_centis "$1" && echo "$CENTIS"
}

# strip_zeros NUMBER: its digits without leading zeros (sh reads 08 as a bad octal number) in _digits;
# "" is 0.
strip_zeros() {
    _digits=$1
    while :; do
        case $_digits in 0?*) _digits=${_digits#0} ;; *) break ;; esac
    done
    _digits=${_digits:-0}
}

now_centis() {
    if { read -r _up _idle </proc/uptime; } 2>/dev/null; then
        strip_zeros "${_up%.*}${_up#*.}" # Linux prints two decimals: 1234.56 -> 123456
        echo "$_digits"
    else
        echo "$(($(date +%s) * 100))"
    fi
}

# seconds CENTIS: hundredths as seconds ("0.05"), for sleep and curl.
seconds() {
    printf '%d.%02d' "$(($1 / 100))" "$(($1 % 100))"
}

to_centis "$POLL_SECS" || die "POLL_SECS must be a number of seconds, got '$POLL_SECS'"
POLL_CENTIS=$CENTIS
[ "$POLL_CENTIS" -ge 1 ] || POLL_CENTIS=1
to_centis "$REQUEST_TIMEOUT_SECS" || die "REQUEST_TIMEOUT_SECS must be a number of seconds, got '$REQUEST_TIMEOUT_SECS'"
REQUEST_TIMEOUT_CENTIS=$CENTIS
to_centis "$STOP_GRACE_SECS" || die "STOP_GRACE_SECS must be a number of seconds, got '$STOP_GRACE_SECS'"
STOP_GRACE_CENTIS=$CENTIS

# deadline SECONDS: every wait and request of this hook run ends by then (to the 10 ms).
deadline() {
    to_centis "$1" || die "timeout must be a number of seconds, got '$1'"
    TIMEOUT_SECS=$1
    # +1: the clock ticks in hundredths, so "now" may be up to one tick old: never end early.
    DEADLINE=$(($(now_centis) + CENTIS + 1))
}

# seconds_left: what is left until the deadline, in seconds (at least 0.1: a last request).
seconds_left() {
    _left=$((DEADLINE - $(now_centis)))
    [ "$_left" -ge 10 ] || _left=10
    seconds "$_left"
}

# poll_start, then poll_wait between two polls: 50 ms pauses for the first second (a small
# model loads in a fraction of one, a server exits in less), then each pause doubles up to
# POLL_SECS, so a fast load is seen at once and a slow one is not hammered. poll_wait never
# sleeps past the deadline and fails (1) once it has passed.
poll_start() {
    _pause=5
    _poll_started=$(now_centis)
}

poll_wait() {
    _now=$(now_centis)
    _until_deadline=$((DEADLINE - _now))
    [ "$_until_deadline" -gt 0 ] || return 1
    [ $((_now - _poll_started)) -lt 100 ] || _pause=$((_pause * 2))
    [ "$_pause" -le "$POLL_CENTIS" ] || _pause=$POLL_CENTIS
    if [ "$_pause" -le "$_until_deadline" ]; then
        sleep "$(seconds "$_pause")"
    else
        sleep "$(seconds "$_until_deadline")"
    fi
}

# http METHOD PATH [JSON]: one short request (REQUEST_TIMEOUT_SECS at most);
# http_long METHOD PATH [JSON]: one request that may take until the deadline (a load, a sleep).
# Both set HTTP_STATUS ("000" when nothing answered) and HTTP_BODY.
http() {
    _left=$((DEADLINE - $(now_centis)))
    [ "$_left" -le "$REQUEST_TIMEOUT_CENTIS" ] || _left=$REQUEST_TIMEOUT_CENTIS
    [ "$_left" -ge 10 ] || _left=10
    http_request "$(seconds "$_left")" "$@"
}

http_long() {
    http_request "$(seconds_left)" "$@"
}

http_request() {
    _max=$1 _method=$2 _url=$BACKEND_URL$3
    if [ $# -ge 4 ]; then
        set -- -H 'Content-Type: application/json' --data "$4"
    elif [ "$_method" = POST ]; then
        set -- --data ''
    else
        set --
    fi
    _out=$(curl -s -X "$_method" --max-time "$_max" -w "${NL}%{http_code}" "$@" "$_url") || :
    HTTP_STATUS=${_out##*"$NL"}
    HTTP_BODY=${_out%"$NL"*}
}

# expect_ok WHAT: die unless the last request answered 200, saying what it answered.
expect_ok() {
    [ "$HTTP_STATUS" = 200 ] && return 0
    [ "$HTTP_STATUS" != 000 ] || die "$1: nothing answered at $BACKEND_URL"
    die "$1 answered HTTP $HTTP_STATUS: $(one_line "$HTTP_BODY")"
}

# answered: what the last request got, for messages.
answered() {
    if [ "$HTTP_STATUS" = 000 ]; then echo "nothing answers"; else echo "HTTP $HTTP_STATUS"; fi
}

one_line() {
    printf '%s' "$1" | tr '\n\r\t' '   ' | cut -c1-300
}

# compact TEXT: JSON without blanks, so `case` patterns can match it.
compact() {
    printf '%s' "$1" | tr -d ' \n\r\t'
}

# json_string TEXT: TEXT as a JSON string literal.
json_string() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# wait_until WHAT COMMAND [ARG...]: run COMMAND until it succeeds; die once the deadline passed.
wait_until() {
    _what=$1
    shift
    poll_start
    until "$@"; do
        poll_wait || die "timed out after ${TIMEOUT_SECS}s waiting for $_what"
    done
}

# --- servers the hooks start themselves (pidfile, own session, whole-group stop) ---

read_pid() {
    # Only a pidfile of our own: sleep signals the process group it names.
    [ -r "$PIDFILE" ] && [ -O "$PIDFILE" ] || return 0
    { read -r _pid <"$PIDFILE"; } 2>/dev/null || return 0
    case $_pid in '' | *[!0-9]*) ;; *) echo "$_pid" ;; esac
}

# pid_alive PID: the process exists and is not a zombie (an exited server whose parent, the
# hook, is gone may linger as a zombie until init reaps it; it holds no GPU memory).
pid_alive() {
    [ -n "$1" ] || return 1
    if [ -r "/proc/$1/stat" ]; then
        { read -r _stat <"/proc/$1/stat"; } 2>/dev/null || return 1
        _state=${_stat##*) }
        _state=${_state%% *}
        [ "$_state" != Z ] && [ "$_state" != X ]
    else
        kill -s 0 "$1" 2>/dev/null
    fi
}

# group_alive PGID: some live process is still in that process group (a server's workers hold
# GPU memory too: vLLM's engine core, tensor-parallel ranks).
group_alive() {
    [ -n "$1" ] || return 1
    # No process at all in the group (the usual case once it has exited): no scan needed.
    kill -s 0 -- "-$1" 2>/dev/null || return 1
    [ -d /proc/self ] || return 0
    [ -n "$(group_members "$1")" ]
}

# group_members PGID: the pids of the live (not zombie) processes in that process group. One
# awk over every /proc/*/stat: a loop in sh takes ten times as long. (`cat`, because awk may
# stop at a file that vanished meanwhile.)
group_members() {
    # Fields after the command name: state ppid pgrp ... (the name may hold anything).
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v group="$1" '
        { pid = $1; sub(/.*\) /, "") }
        $3 == group && $1 != "Z" && $1 != "X" { print pid }'
}

group_gone() {
    ! group_alive "$1"
}

# holds_port PID: a live process of PID's process group listens on LLMUX_PORT, read from
# /proc/net/tcp{,6} and the processes' fds (Linux; elsewhere a live PID is all the proof there
# is). Proves that what answers on the port is the server these hooks started.
holds_port() {
    pid_alive "$1" || return 1
    [ -r /proc/net/tcp ] || return 0
    _hex=$(printf ':%04X' "$LLMUX_PORT")
    _inodes=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v port="$_hex" '$4 == "0A" && substr($2, length($2) - 4) == port { print $10 }')
    [ -n "$_inodes" ] || return 1
    # The server's first process usually holds the socket itself: look there before the group.
    _fds=$(ls -l "/proc/$1/fd" 2>/dev/null)
    for _inode in $_inodes; do
        case $_fds in *"socket:[$_inode]"*) return 0 ;; esac
    done
    for _member in $(group_members "$1"); do
        _fds=$(ls -l "/proc/$_member/fd" 2>/dev/null)
        for _inode in $_inodes; do
            case $_fds in *"socket:[$_inode]"*) return 0 ;; esac
        done
    done
    return 1
}

# serves_model ID...: GET /v1/models lists one of the ids.
serves_model() {
    http GET /v1/models
    [ "$HTTP_STATUS" = 200 ] || return 1
    _models=$(compact "$HTTP_BODY")
    for _id in "$@"; do
        case $_models in *"\"id\":$(json_string "$_id")"*) return 0 ;; esac
    done
    return 1
}

# own_server WHAT: die unless a process of the group these hooks started (PIDFILE) listens on
# the port: a healthy answer alone may come from another program, serving another model.
own_server() {
    _pid=$(read_pid)
    pid_alive "$_pid" || die "port $LLMUX_PORT answers but no $1 started by these hooks runs (no live process in $PIDFILE): another program holds the port; stop it or give this model another port"
    holds_port "$_pid" || die "port $LLMUX_PORT is held by another program, not by the $1 these hooks started (pid $_pid): stop that program or give this model another port"
}

# own_or_serving WHAT ID...: like own_server, but a server these hooks did not start (one run
# as a service) is accepted when GET /v1/models lists one of the ids.
own_or_serving() {
    _what=$1
    shift
    if pid_alive "$(read_pid)"; then
        own_server "$_what"
        return 0
    fi
    serves_model "$@" && return 0
    die "the server on port $LLMUX_PORT was not started by these hooks and does not serve $1 (GET /v1/models: $(answered) $(one_line "$HTTP_BODY" | cut -c1-120)): is another model's server on that port?"
}

last_log_line() {
    _line=$(tail -n 1 "$LOGFILE" 2>/dev/null)
    one_line "${_line:-(empty)}"
}

# run_dir: create AIOLLMUX_RUN_DIR (private) if needed; refuse one that another user owns.
run_dir() {
    (umask 077 && mkdir -p "$AIOLLMUX_RUN_DIR") 2>/dev/null || die "cannot create AIOLLMUX_RUN_DIR $AIOLLMUX_RUN_DIR"
    [ -O "$AIOLLMUX_RUN_DIR" ] || die "AIOLLMUX_RUN_DIR $AIOLLMUX_RUN_DIR belongs to another user"
}

# start_detached COMMAND [ARG...]: start a server in a session of its own, so that a hook
# timeout (which kills the hook's process group) does not take it down and sleep can stop
# its whole group; stdin closed, output appended to LOGFILE, pid in PIDFILE.
start_detached() {
    need setsid "util-linux"
    run_dir
    printf '=== %s: %s\n' "$(date)" "$*" >>"$LOGFILE" || die "cannot write $LOGFILE"
    # A background job of a non-interactive sh is not a group leader, so setsid(1) calls
    # setsid(2) and execs in place: $! is the server's pid and its process group id.
    setsid "$@" >>"$LOGFILE" 2>&1 </dev/null &
    echo "$!" >"$PIDFILE"
}

# wait_started WHAT READY_COMMAND: wait until READY_COMMAND succeeds; die at once with the last
# log line if the server process exits meanwhile.
wait_started() {
    _name=$1
    shift
    wait_until "$_name to answer on port $LLMUX_PORT" _started_and "$@"
}

_started_and() {
    pid_alive "$(read_pid)" || die "$_name exited while starting (last log line: $(last_log_line)); full log: $LOGFILE"
    "$@"
}

# stop_detached WHAT: SIGTERM the process group named by PIDFILE, SIGKILL after
# STOP_GRACE_SECS, and return only once every process of the group has exited.
stop_detached() {
    _pid=$(read_pid)
    if [ -n "$_pid" ] && group_alive "$_pid"; then
        kill -s TERM -- "-$_pid" 2>/dev/null
        _grace_end=$(($(now_centis) + STOP_GRACE_CENTIS))
        poll_start
        while group_alive "$_pid" && [ "$(now_centis)" -lt "$_grace_end" ] && poll_wait; do
            :
        done
        if group_alive "$_pid"; then
            kill -s KILL -- "-$_pid" 2>/dev/null
            wait_until "$1 (process group $_pid) to exit after SIGKILL" group_gone "$_pid"
        fi
    fi
    rm -f "$PIDFILE"
}
