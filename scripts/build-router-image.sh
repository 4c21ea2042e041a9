#!/usr/bin/env bash
# Build the router image on a machine that cannot pull images or reach PyPI from a build.
#
#   1. The base image ($BASE_IMAGE, default llm-router-base:local) stands in for
#      python:3.11-slim: a Debian rootfs made with `debootstrap --variant=minbase` from this
#      machine's own suite and mirror (read from its apt configuration), with python3,
#      python3-venv and ca-certificates, imported with `docker import`. Made once, then
#      reused while the image exists (docker rmi it to rebuild).
#   2. The router's wheels are built on the host, with the host's pip settings, into
#      service/wheels/; service/Dockerfile installs from there with no index. (Skipped when
#      the host's Python differs from the image's: that build then needs the index.)
#   3. docker build -f service/Dockerfile --build-arg BASE_IMAGE=$BASE_IMAGE -t $IMAGE .
#
# Needs a running engine (scripts/docker-engine.sh) and, for step 1, root and debootstrap.
# The normal build (`make up`, python:3.11-slim from a registry, PyPI) needs none of this.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-llm-router-base:local}
IMAGE=${IMAGE:-llm-router:test}
PYTHON=${PYTHON:-python3}
WHEELS=service/wheels   # inside the build context; empty (but for .gitkeep) when committed

say() { printf 'build-router-image: %s\n' "$*"; }
total_started=$SECONDS

# --- 1. the base image ----------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE exists; reusing it"
elif [[ "$BASE_IMAGE" != *:local ]]; then
  # A registry image (e.g. BASE_IMAGE=python:3.11.14-slim-bookworm where pulls work).
  say "pulling base image $BASE_IMAGE"
  docker pull --quiet "$BASE_IMAGE" >/dev/null
else
  command -v debootstrap >/dev/null || { say "debootstrap is missing (scripts/docker-engine.sh installs it)" >&2; exit 1; }
  ((EUID == 0)) || { say "debootstrap needs root to make $BASE_IMAGE" >&2; exit 1; }
  . /etc/os-release
  suite=${DEBIAN_SUITE:-${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}}
  # The mirror this machine's apt already uses for that suite (no host is written here).
  mirror=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' \
    | awk -v suite="$suite" '$1 == suite { print $2; exit }')}
  [[ -n "$mirror" ]] || { say "no apt source for suite $suite; set DEBIAN_MIRROR" >&2; exit 1; }
  rootfs=$(mktemp -d /var/tmp/llm-router-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap --variant=minbase $suite from the machine's mirror into $rootfs"
  started=$SECONDS
  timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  # What an image does not need: package caches and lists, docs, man pages.
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite + python3, python3-venv, ca-certificates" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  say "base image $BASE_IMAGE made in $((SECONDS - started)) s"
fi

# The router needs Python >= 3.11, and the host-built wheels must match the image's Python.
image_python=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
say "python: $image_python in $BASE_IMAGE, $host_python on the host"
"$PYTHON" -c "import sys; sys.exit(tuple(map(int, '$image_python'.split('.'))) < (3, 11))" \
  || { say "$BASE_IMAGE has Python $image_python; the router needs >= 3.11" >&2; exit 1; }

# --- 2. wheels, built with this machine's pip settings ---------------------------------------
find "$WHEELS" -name '*.whl' -delete   # never install a stale router wheel
if [[ "$image_python" != "$host_python" ]]; then
  # Wheels for another Python would not install; the build then needs the index itself.
  say "host Python $host_python differs from the image's $image_python: no wheels, the build uses the index"
else
  started=$SECONDS
  had_build_dir=$([[ -e service/build ]] && echo yes || echo no)
  # setuptools is the router's build backend: pip needs it to build ./service in the image.
  build_backend=$(sed -n 's/^requires = \["\(setuptools==[^"]*\)"\]/\1/p' service/pyproject.toml)
  pip_log=$(mktemp /tmp/llm-router-wheels.XXXXXX.log)
  "$PYTHON" -m pip wheel --disable-pip-version-check -c service/constraints.txt \
    -w "$WHEELS" ./service "$build_backend" >"$pip_log" 2>&1 \
    || { tail -n 30 "$pip_log" >&2; say "pip wheel failed; full log: $pip_log" >&2; exit 1; }
  rm -f "$pip_log"
  [[ $had_build_dir == yes ]] || rm -rf service/build   # setuptools' scratch folder
  say "$(find "$WHEELS" -name '*.whl' | wc -l) wheels in $WHEELS in $((SECONDS - started)) s"
fi

# --- 3. the router image ---------------------------------------------------------------------
started=$SECONDS
status=0
log=$(mktemp /tmp/llm-router-build.XXXXXX.log)
timeout 1200 docker build --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -f service/Dockerfile -t "$IMAGE" . >"$log" 2>&1 || status=$?
find "$WHEELS" -name '*.whl' -delete
if ((status != 0)); then
  tail -n 40 "$log" >&2
  say "docker build failed (exit $status); full log: $log" >&2
  exit "$status"
fi
rm -f "$log"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "image $IMAGE built in $((SECONDS - started)) s, $((size / 1000000)) MB; total $((SECONDS - total_started)) s"
