#!/usr/bin/env bash
# Install project-local copies of Prometheus (+ promtool), Alertmanager (+ amtool),
# the docker compose v2 CLI plugin and kubectl into ./.tools (git-ignored).
#
# The binaries come from Debian's "unstable" suite (stable ships versions that are
# too old); they are Go programs that need only libc, so they run on a stable base.
# apt is driven with a PRIVATE configuration (own sources list, lists dir and cache),
# so the machine's apt state is never touched and nothing is installed system-wide.
# The mirror is derived from the machine's own apt configuration at run time
# (override with TOOLS_APT_MIRROR=<uri>; suite with TOOLS_APT_SUITE=<suite>).
#
# Result:
#   .tools/bin/{prometheus,promtool,alertmanager,prometheus-alertmanager,amtool,docker-compose,kubectl}
#   .tools/docker/cli-plugins/docker-compose   ->  DOCKER_CONFIG=.tools/docker docker compose version
#
# Idempotent: if the expected versions are already present it exits immediately.
# Set TOOLS_FORCE=1 to reinstall anyway.
set -euo pipefail

# ---- pinned expectations ----------------------------------------------------
PROMETHEUS_VERSION_PREFIX="3.5."     # prometheus + promtool (3.5 LTS)
ALERTMANAGER_VERSION_PREFIX="0.33."  # alertmanager + amtool
COMPOSE_VERSION_PREFIX="2."          # docker compose v2 plugin
# kubectl renders deploy/kubernetes (`kubectl kustomize`, tests/config/test_kubernetes.py):
# any 1.x from unstable bundles kustomize v5 (stable's kubernetes-client 1.20 has v2, too old).
KUBECTL_VERSION_PREFIX="1."
APT_SUITE="${TOOLS_APT_SUITE:-unstable}"
DEB_PACKAGES=(prometheus promtool prometheus-alertmanager docker-compose kubectl)

# ---- paths ------------------------------------------------------------------
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$REPO_ROOT/.tools"
BIN_DIR="$TOOLS_DIR/bin"
AM_SHARE=/usr/share/prometheus/alertmanager
PLUGIN_DIR="$TOOLS_DIR/docker/cli-plugins"

log() { printf '[install-tools] %s\n' "$*" >&2; }
die() { printf '[install-tools] ERROR: %s\n' "$*" >&2; exit 1; }

# Print the first "version X.Y.Z" token of a tool's --version output ("" if none).
tool_version() {
  local out
  out="$("$@" 2>&1)" || return 0
  printf '%s\n' "$out" | sed -n 's/.*[Vv]ersion:\{0,1\} v\{0,1\}\([0-9][0-9A-Za-z.+~-]*\).*/\1/p' | head -n1
}

# versions_ok [quiet] -> 0 if every tool is present with the expected version.
versions_ok() {
  local quiet="${1:-}" ok=0 v
  check() { # name prefix cmd...
    local name="$1" prefix="$2"; shift 2
    if [[ ! -x "$1" ]]; then
      [[ -n "$quiet" ]] || log "missing: $1"; ok=1; return
    fi
    v="$(tool_version "$@")"
    if [[ "$v" != "$prefix"* ]]; then
      [[ -n "$quiet" ]] || log "$name reports version '${v:-<none>}', expected ${prefix}x"; ok=1
    fi
  }
  check promtool     "$PROMETHEUS_VERSION_PREFIX"   "$BIN_DIR/promtool" --version
  check prometheus   "$PROMETHEUS_VERSION_PREFIX"   "$BIN_DIR/prometheus" --version
  check amtool       "$ALERTMANAGER_VERSION_PREFIX" "$BIN_DIR/amtool" --version
  if [[ -f "$TOOLS_DIR/.from-images" ]]; then
    :  # wrappers around the pinned images: no Debian template path, no compose plugin here
  elif [[ ! -f "$AM_SHARE/default.tmpl" ]]; then
    [[ -n "$quiet" ]] || log "missing: $AM_SHARE/default.tmpl"; ok=1
  fi
  check alertmanager "$ALERTMANAGER_VERSION_PREFIX" "$BIN_DIR/alertmanager" --version
  [[ -f "$TOOLS_DIR/.from-images" ]] || check docker-compose "$COMPOSE_VERSION_PREFIX" "$PLUGIN_DIR/docker-compose" version
  [[ -f "$TOOLS_DIR/.from-images" ]] || check kubectl "$KUBECTL_VERSION_PREFIX" "$BIN_DIR/kubectl" version --client
  return "$ok"
}

summary() {
  log "installed in $BIN_DIR:"
  printf '  prometheus     %s\n' "$(tool_version "$BIN_DIR/prometheus" --version)"
  printf '  promtool       %s\n' "$(tool_version "$BIN_DIR/promtool" --version)"
  printf '  alertmanager   %s\n' "$(tool_version "$BIN_DIR/alertmanager" --version)"
  printf '  amtool         %s\n' "$(tool_version "$BIN_DIR/amtool" --version)"
  printf '  docker-compose %s  (DOCKER_CONFIG=%s docker compose version)\n' \
    "$(tool_version "$PLUGIN_DIR/docker-compose" version)" "$TOOLS_DIR/docker"
  printf '  kubectl        %s\n' "$(tool_version "$BIN_DIR/kubectl" version --client)"
}

# ---- fast path ----------------------------------------------------------------
if [[ -z "${TOOLS_FORCE:-}" ]] && versions_ok quiet; then
  log "tools already installed ($BIN_DIR)"
  exit 0
fi

# ---- no Debian packages here, but Docker: the same tools from the pinned images -------------
if [[ -n "${TOOLS_FROM_IMAGES:-}" ]] || ! command -v apt-get >/dev/null; then
  log "apt-get unavailable (or TOOLS_FROM_IMAGES set): using the pinned images"
  exec "$REPO_ROOT/scripts/tools-from-images.sh"
fi
rm -f "$TOOLS_DIR/.from-images"

command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# ---- find the machine's Debian mirror ---------------------------------------------
# Pick the configured archive whose suite is the base release (not -updates/-security).
find_mirror() {
  local codename="" site release
  # shellcheck disable=SC1091
  codename="$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")" || true
  local candidates
  candidates="$(apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null | sort -u || true)"
  if [[ -z "$candidates" ]]; then
    # Fallback: parse one-line and deb822 sources files directly.
    candidates="$(
      { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\)[[:space:]]\+\([^[:space:]]\+\).*/\2 \3/p'
        for f in /etc/apt/sources.list.d/*.sources; do
          [[ -r "$f" ]] || continue
          awk 'BEGIN{RS=""; FS="\n"}
               { u=""; s=""
                 for (i=1;i<=NF;i++) {
                   if ($i ~ /^URIs:/)   { u=$i; sub(/^URIs:[ \t]*/,"",u); split(u,ua,/[ \t]+/); u=ua[1] }
                   if ($i ~ /^Suites:/) { s=$i; sub(/^Suites:[ \t]*/,"",s) }
                 }
                 n=split(s,sa,/[ \t]+/); for (j=1;j<=n;j++) if (u!="") print u, sa[j] }' "$f"
        done
      } | sort -u)"
  fi
  [[ -n "$candidates" ]] || return 1
  while read -r site release; do
    [[ -n "$codename" && "$release" == "$codename" ]] && { printf '%s\n' "${site%/}"; return 0; }
  done <<<"$candidates"
  while read -r site release; do
    [[ "$release" != *-* && "$site" != *security* ]] && { printf '%s\n' "${site%/}"; return 0; }
  done <<<"$candidates"
  return 1
}

MIRROR="${TOOLS_APT_MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(find_mirror)" || die "could not derive a Debian mirror from the apt configuration; set TOOLS_APT_MIRROR=<debian mirror uri>"
fi
log "using mirror $MIRROR (suite: $APT_SUITE)"

# ---- private apt setup ----------------------------------------------------------
mkdir -p "$TOOLS_DIR"
WORK="$(mktemp -d "$TOOLS_DIR/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$WORK/root" "$WORK/empty"

SIGNED_BY=""
[[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] && \
  SIGNED_BY=" [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
printf 'deb%s %s %s main\n' "$SIGNED_BY" "$MIRROR" "$APT_SUITE" >"$WORK/sources.list"

APT_OPTS=(
  -o "Dir::Etc::SourceList=$WORK/sources.list"
  -o "Dir::Etc::SourceParts=$WORK/empty"
  -o "Dir::Etc::Preferences=$WORK/empty/preferences"
  -o "Dir::Etc::PreferencesParts=$WORK/empty"
  -o "Dir::State::Lists=$WORK/lists"
  -o "Dir::State::Status=/dev/null"
  -o "Dir::Cache=$WORK/cache"
  -o "Dir::Cache::Archives=$WORK/cache/archives"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
  -o "Acquire::IndexTargets::deb::DEP11::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP11-icons::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP11-icons-small::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
  -o "Acquire::Retries=3"
  -o "Debug::NoLocking=true"
)

log "apt-get update (private lists only)"
apt-get "${APT_OPTS[@]}" -qq update >"$WORK/update.log" 2>&1 || {
  cat "$WORK/update.log" >&2
  die "private apt-get update failed for '$MIRROR $APT_SUITE' (is this a Debian mirror? set TOOLS_APT_MIRROR)"
}
grep -E '^(W|E):' "$WORK/update.log" >&2 || true

log "downloading: ${DEB_PACKAGES[*]}"
(cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" -q download "${DEB_PACKAGES[@]}") >&2 \
  || die "apt-get download failed"

for deb in "$WORK"/debs/*.deb; do
  log "  $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
  dpkg-deb -x "$deb" "$WORK/root"
done

# Locate a file in the extracted tree (first match under the usual dirs).
find_bin() {
  local name="$1" p
  for p in usr/bin usr/sbin usr/libexec/docker/cli-plugins usr/lib/docker/cli-plugins; do
    [[ -f "$WORK/root/$p/$name" ]] && { printf '%s\n' "$WORK/root/$p/$name"; return 0; }
  done
  p="$(find "$WORK/root" -type f -name "$name" -perm -u+x | head -n1)"
  [[ -n "$p" ]] || die "binary '$name' not found in the downloaded packages"
  printf '%s\n' "$p"
}

SRC_PROMETHEUS="$(find_bin prometheus)"
SRC_PROMTOOL="$(find_bin promtool)"
SRC_ALERTMANAGER="$(find_bin prometheus-alertmanager)"
SRC_AMTOOL="$(find_bin amtool)"
SRC_COMPOSE="$(find_bin docker-compose)"
SRC_KUBECTL="$(find_bin kubectl)"

# ---- install ------------------------------------------------------------------
mkdir -p "$BIN_DIR" "$PLUGIN_DIR"
install -m 0755 "$SRC_PROMETHEUS"   "$BIN_DIR/prometheus"
install -m 0755 "$SRC_PROMTOOL"     "$BIN_DIR/promtool"
install -m 0755 "$SRC_ALERTMANAGER" "$BIN_DIR/prometheus-alertmanager"
install -m 0755 "$SRC_AMTOOL"       "$BIN_DIR/amtool"
install -m 0755 "$SRC_COMPOSE"      "$PLUGIN_DIR/docker-compose"
install -m 0755 "$SRC_KUBECTL"      "$BIN_DIR/kubectl"
ln -sfn prometheus-alertmanager              "$BIN_DIR/alertmanager"
ln -sfn ../docker/cli-plugins/docker-compose "$BIN_DIR/docker-compose"

# Debian's alertmanager build reads its default notification templates from this fixed
# path instead of embedding them: without it, it refuses any config with receivers.
AM_SHARE_SRC="$WORK/root$AM_SHARE"
[[ -f "$AM_SHARE_SRC/default.tmpl" ]] || die "default.tmpl missing from the alertmanager package"
if ! { mkdir -p "$AM_SHARE" && cp -r "$AM_SHARE_SRC/." "$AM_SHARE/"; } 2>/dev/null; then
  die "cannot write $AM_SHARE (run as root): Debian's alertmanager needs its templates there"
fi

# ---- verify -------------------------------------------------------------------
versions_ok || die "installed tools do not match the pinned versions (prometheus/promtool ${PROMETHEUS_VERSION_PREFIX}x, alertmanager/amtool ${ALERTMANAGER_VERSION_PREFIX}x, compose ${COMPOSE_VERSION_PREFIX}x, kubectl ${KUBECTL_VERSION_PREFIX}x); Debian '$APT_SUITE' may have moved on - update the pins or TOOLS_APT_SUITE"
summary
