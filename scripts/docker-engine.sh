#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, starting one by hand where none runs.
#
# For CI machines and dev boxes without systemd (run as root there): installs Debian's
# docker.io and debootstrap if missing, starts `dockerd --iptables=false` in the background
# (overlay2 when the kernel allows it, vfs otherwise) with its log in $DOCKERD_LOG, and
# waits for it, bounded. Where an engine already answers (Docker Desktop, a systemd
# service, an earlier run), it does nothing. Safe to run repeatedly and concurrently.
#
# Without iptables, containers get no outbound traffic: builds must not need the network
# (scripts/build-router-image.sh installs prebuilt wheels) or must use --network=host.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_TIMEOUT=${DOCKERD_TIMEOUT:-60}   # seconds to wait for each start attempt

say() { printf 'docker-engine: %s\n' "$*"; }

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_up; then
  say "engine already running ($(docker info --format '{{.ServerVersion}}, storage {{.Driver}}'))"
  exit 0
fi

if ((EUID != 0)); then
  say "no Docker engine answers and starting one needs root; run: sudo $0" >&2
  exit 1
fi

# One starter at a time (make and CI may both call this).
exec 9>/run/llm-router-docker-engine.lock
flock -w $((DOCKERD_TIMEOUT * 3)) 9 || { say "timed out waiting for another start" >&2; exit 1; }
if command -v docker >/dev/null && engine_up; then
  say "engine started by a concurrent run"
  exit 0
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  say "installing ${missing[*]} with apt-get"
  started=$SECONDS
  timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  say "installed in $((SECONDS - started)) s"
fi

mkdir -p "$(dirname "$DOCKERD_LOG")"

# Start dockerd with one storage driver; succeed once `docker info` answers, fail fast if
# the daemon exits (an unsupported driver makes it exit at once).
try_start() {
  local driver=$1 pid deadline
  say "starting dockerd --iptables=false --storage-driver=$driver (log: $DOCKERD_LOG)"
  echo "=== $(date -u +%FT%TZ) docker-engine.sh: storage driver $driver" >>"$DOCKERD_LOG"
  # setsid + nohup: the daemon outlives this script and the shell that ran it.
  setsid nohup dockerd --iptables=false --storage-driver="$driver" \
    </dev/null >>"$DOCKERD_LOG" 2>&1 &
  pid=$!
  deadline=$((SECONDS + DOCKERD_TIMEOUT))
  while ((SECONDS < deadline)); do
    if engine_up; then
      say "engine up: pid $pid, $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}')"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      say "dockerd exited with storage driver $driver; last log lines:"
      tail -n 5 "$DOCKERD_LOG" | sed 's/^/  /'
      return 1
    fi
    sleep 1
  done
  say "dockerd did not answer within ${DOCKERD_TIMEOUT}s; stopping it"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

# A stale pid file from a killed daemon stops the next one from starting.
if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

for driver in ${DOCKER_STORAGE_DRIVER:-overlay2 vfs}; do
  try_start "$driver" && exit 0
done
say "could not start a Docker engine; see $DOCKERD_LOG" >&2
exit 1
