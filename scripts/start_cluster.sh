#!/usr/bin/env bash
# mxserve under supervisord: the broker (one worker per GPU, pinned; CPU workers with
# --gpus 0) and the gunicorn frontends as two supervised programs (supervisord.conf).
#
#   scripts/start_cluster.sh start --gpus N --models name=archive ... [--any-mxserve-flag V]
#   scripts/start_cluster.sh status | stop | restart
#
# Settings go to both programs as MXSERVE_* variables (docs/configuration.md): --port 8080
# becomes MXSERVE_PORT=8080. The run directory ($MXSERVE_RUN_DIR, default
# $XDG_RUNTIME_DIR/mxserve-cluster, else /tmp/mxserve-cluster-<uid>) holds ipc sockets,
# extracted archives, supervisord's socket, the logs and the management token
# (management.token, mode 0600); the settings of the last `start` are kept there for
# `restart`, never a secret. It must be ours, mode 0700 and not a symlink, or nothing runs.
# `start` waits until /ping answers 200 (exit 0) or a program exits (exit 1; bad config and
# "no model can load" are not restart-looped), bounded by --wait seconds (default 300).
set -euo pipefail
home="$(cd "$(dirname "$0")/.." && pwd)"
python="${MXSERVE_PYTHON:-$home/.venv/bin/python}"
run_dir="${MXSERVE_RUN_DIR:-${XDG_RUNTIME_DIR:-/tmp}/mxserve-cluster-$(id -u)}"
supervisord="$(dirname "$python")/supervisord"
supervisorctl="$(dirname "$python")/supervisorctl"
export MXSERVE_HOME="$home" MXSERVE_PYTHON="$python" MXSERVE_RUN_DIR="$run_dir"
export MXSERVE_STOP_WAIT_S="${MXSERVE_STOP_WAIT_S:-35}"  # start sets it from drain_timeout_s

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

private_run_dir() {  # made 0700, or refused: another user could have made it first
  mkdir -m 700 "$run_dir" 2>/dev/null || true
  if [ -L "$run_dir" ] || [ ! -d "$run_dir" ] || [ ! -O "$run_dir" ] \
      || [ "$(stat -c %a "$run_dir")" != 700 ]; then
    echo "start_cluster.sh: $run_dir must be a folder of ours with mode 700 (not a symlink)" >&2
    exit 2
  fi
}

keep_token_out_of_the_environment() {  # children read the token from a 0600 file instead
  if [ -n "${MXSERVE_MANAGEMENT_TOKEN:-}" ]; then
    (umask 077; printf '%s\n' "$MXSERVE_MANAGEMENT_TOKEN" > "$run_dir/management.token")
    unset MXSERVE_MANAGEMENT_TOKEN
  fi
}
ctl() { "$supervisorctl" -c "$home/supervisord.conf" "$@"; }
running() { [ -S "$run_dir/supervisor.sock" ] && ctl pid >/dev/null 2>&1; }

save_settings() {  # --flag value ... -> export MXSERVE_FLAG=value lines in settings.env
  local key value
  : > "$run_dir/settings.env.new"
  while [ $# -gt 0 ]; do
    case "$1" in
      --wait) printf 'wait_s=%q\n' "$2" >> "$run_dir/settings.env.new"; shift 2; continue ;;
      --management-token|--management-token=*)
        echo "start_cluster.sh: a token on the command line shows in ps; use" \
             "--management-token-file FILE (or MXSERVE_MANAGEMENT_TOKEN)" >&2; exit 2 ;;
      --*) key="MXSERVE_$(echo "${1#--}" | tr 'a-z-' 'A-Z_')"; shift ;;
      *) echo "start_cluster.sh: unexpected argument $1" >&2; exit 2 ;;
    esac
    value=""
    while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do value="${value:+$value }$1"; shift; done
    printf 'export %s=%q\n' "$key" "$value" >> "$run_dir/settings.env.new"
  done
  mv "$run_dir/settings.env.new" "$run_dir/settings.env"
}

start() {
  local wait_s=300
  # shellcheck disable=SC1091
  . "$run_dir/settings.env"
  keep_token_out_of_the_environment
  # Refuse a bad configuration here, with its message, before supervisord starts anything.
  "$python" -m mxserve.instance.cli config --show > "$run_dir/effective-config.toml"
  local drain port
  drain="$(awk -F' *= *' '/^drain_timeout_s/ {print int($2)}' "$run_dir/effective-config.toml")"
  port="$(awk -F' *= *' '/^port/ {print $2; exit}' "$run_dir/effective-config.toml" | cut -d' ' -f1)"
  host="$(awk -F' *= *' '/^host/ {print $2; exit}' "$run_dir/effective-config.toml" | cut -d'"' -f2)"
  export MXSERVE_STOP_WAIT_S=$(( drain + 15 ))  # above the broker's drain + worker stop
  # Every process's metrics files (common/metrics.py), emptied: counters start at 0.
  export PROMETHEUS_MULTIPROC_DIR="$run_dir/metrics"
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"; mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  "$supervisord" -c "$home/supervisord.conf"
  local grpc_port
  grpc_port="$(awk -F' *= *' '/^grpc_port/ {print $2; exit}' "$run_dir/effective-config.toml" | cut -d' ' -f1)"
  if [ "${grpc_port:-0}" != 0 ]; then ctl start grpc > /dev/null; fi
  local deadline=$(( $(date +%s) + wait_s )) url="http://$host:$port"
  [[ "$host" == *:* ]] && url="http://[$host]:$port"
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if curl -sf -o /dev/null "$url/ping"; then
      echo "mxserve cluster serving on $url (supervisord in $run_dir)"; ctl status; return 0
    fi
    ctl status > "$run_dir/status.txt" 2>&1 || true  # non-zero while any is not RUNNING
    if grep -qE 'EXITED|FATAL|BACKOFF' "$run_dir/status.txt"; then
      echo "start_cluster.sh: a program stopped; see $run_dir/*.log" >&2
      cat "$run_dir/status.txt" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "start_cluster.sh: not ready after ${wait_s}s; see $run_dir/*.log" >&2; return 1
}

alive() {  # a live (not zombie) process: a daemon's zombie may never be reaped here
  [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 != "Z") }' "/proc/$1/stat"
}

stop() {
  running || { echo "mxserve cluster is not running"; return 0; }
  local pid deadline=$(( $(date +%s) + 120 ))
  pid="$(cat "$run_dir/supervisord.pid")"
  ctl shutdown  # stops the programs (broker first: it drains) and supervisord
  while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
}

[ $# -ge 1 ] || usage
command="$1"; shift
private_run_dir
case "$command" in
  start)
    running && { echo "mxserve cluster already running (scripts/start_cluster.sh status)" >&2; exit 1; }
    save_settings "$@"
    start ;;
  stop) stop ;;
  status) running || { echo "mxserve cluster is not running"; exit 3; }; ctl status ;;
  restart)
    [ -r "$run_dir/settings.env" ] || { echo "start_cluster.sh: no earlier start to repeat" >&2; exit 2; }
    stop
    start ;;
  *) usage ;;
esac
