"""`make up` / `make down` explain what is missing before running compose (scripts/preflight.py),
and the Makefile's other front-door details: `make help`, .env's mode, Grafana's anonymous
access off the loopback.

No Docker here: a fake `docker` on PATH plays the engine, the compose plugin and the image
store, as told by environment variables, and logs every call. `docker compose config` is
forwarded to the real compose CLI (`make tools`), which needs no engine, so the images the
preflight asks about are the ones compose.yaml really uses. Each Makefile test runs in a
copy of the files it needs, so it never writes the developer's .env.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_BIN = REPO / ".tools" / "bin" / "docker-compose"

FAKE_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for the docker CLI (tests/config/test_preflight.py).
echo "docker $* GRAFANA_ANONYMOUS=${GRAFANA_ANONYMOUS:-}" >> "$FAKE_DOCKER_LOG"
has() { [[ " $1 " == *" $2 "* ]]; }
case "$1" in
  info)
    [[ "$FAKE_ENGINE" == up ]] && { echo 27.5.1; exit 0; }
    echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
    exit 1 ;;
  image)
    has "$FAKE_IMAGES_PRESENT" "${@: -1}" && { echo sha256:0; exit 0; }
    echo "Error: No such image: ${@: -1}" >&2; exit 1 ;;
  manifest)
    has "$FAKE_PULLABLE" "${@: -1}" && { echo '{}'; exit 0; }
    echo "no such manifest: ${@: -1}" >&2; exit 1 ;;
  compose)
    if [[ "$FAKE_COMPOSE" != v2 ]]; then
      echo "docker: 'compose' is not a docker command." >&2; exit 1
    fi
    shift
    for arg in "$@"; do
      case "$arg" in up|down) exit 0 ;; esac
    done
    exec "$FAKE_COMPOSE_BIN" "$@" ;;
esac
echo "fake docker: unexpected $*" >&2
exit 2
"""



@pytest.fixture
def fake(tmp_path, monkeypatch):
    if not COMPOSE_BIN.exists():
        pytest.skip("no .tools/bin/docker-compose (run `make tools`)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_DOCKER_LOG=str(log), FAKE_COMPOSE_BIN=str(COMPOSE_BIN),
               FAKE_ENGINE="up", FAKE_COMPOSE="v2", FAKE_IMAGES_PRESENT="", FAKE_PULLABLE="")
    return {"env": env, "log": log, "dir": tmp_path}


@pytest.fixture
def workdir(tmp_path):
    """The files `make up` reads, copied (compose.yaml's bind sources need not exist for config)."""
    work = tmp_path / "repo"
    (work / "scripts").mkdir(parents=True)
    for name in ("Makefile", ".env.example", "compose.yaml"):
        shutil.copy(REPO / name, work / name)
    shutil.copy(REPO / "scripts" / "preflight.py", work / "scripts" / "preflight.py")
    return work


def env_file(tmp_path: Path, **overrides: str) -> Path:
    text = (REPO / ".env.example").read_text()
    values = {"ROUTER_ADMIN_TOKEN": "x" * 24, "GRAFANA_ADMIN_PASSWORD": "x" * 24, "ALERT_SINK_TOKEN": "x" * 24,
              **overrides}
    lines = [f"{line.split('=')[0]}={values[line.split('=')[0]]}" if line.split("=")[0] in values else line
             for line in text.splitlines()]
    path = tmp_path / "stack.env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """The pinned images of the default services, asked from the real compose (once: the
    answer depends only on compose.yaml and .env.example)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import preflight as script

    found = script.pinned_images([str(COMPOSE_BIN)], [], str(env_file(tmp_path_factory.mktemp("images"))))
    assert isinstance(found, list) and len(found) >= 6, found
    return found


def preflight(fake, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "preflight.py"), *args],
                          env={**fake["env"], **env}, capture_output=True, text=True, timeout=120, cwd=REPO)


def problems(result: subprocess.CompletedProcess) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("✗")]


def test_no_engine_is_one_clear_line(fake):
    result = preflight(fake, "up", "--compose", "docker compose", FAKE_ENGINE="down")
    assert result.returncode == 1
    assert problems(result) == ["✗ no Docker engine answers (Cannot connect to the Docker daemon at "
                                "unix:///var/run/docker.sock. Is the docker daemon running?)"]
    assert "scripts/docker-engine.sh" in result.stdout


def test_missing_compose_plugin_says_make_tools(fake):
    result = preflight(fake, "down", "--compose", "docker compose", FAKE_COMPOSE="missing")
    assert result.returncode == 1
    [line] = problems(result)
    assert line.startswith("✗ compose v2 is not available") and "'compose' is not a docker command" in line
    assert "make tools" in result.stdout


def test_images_present_pullable_or_named_as_missing(fake, images):
    grafana = next(i for i in images if i.startswith("grafana/grafana:"))
    loki = next(i for i in images if i.startswith("grafana/loki:"))
    present = [i for i in images if i not in (grafana, loki)]
    result = preflight(fake, "up", "--compose", "docker compose", "--env-file", str(env_file(fake["dir"])),
                       FAKE_IMAGES_PRESENT=" ".join(present), FAKE_PULLABLE=grafana)
    assert result.returncode == 1
    assert problems(result) == [f"✗ image {loki} is not present and cannot be pulled (no such manifest: {loki})"]
    assert f"1 to pull: {grafana}" in result.stdout
    assert f"docker pull {loki}" in result.stdout


def test_profiles_add_their_images(fake, images):
    result = preflight(fake, "up", "--compose", "docker compose", "--env-file", str(env_file(fake["dir"])),
                       "--profile", "load", FAKE_IMAGES_PRESENT=" ".join(images))
    assert result.returncode == 1
    [line] = problems(result)
    assert "locustio/locust:" in line


def test_everything_in_place_passes(fake, images):
    result = preflight(fake, "up", "--compose", "docker compose", "--env-file", str(env_file(fake["dir"])),
                       FAKE_IMAGES_PRESENT=" ".join(images))
    assert result.returncode == 0, result.stdout + result.stderr
    assert problems(result) == [] and f"{len(images)} of {len(images)} pinned images present" in result.stdout


def make(workdir: Path, fake, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=workdir, env={**fake["env"], **env},
                          capture_output=True, text=True, timeout=180)


def test_make_up_stops_before_compose_and_writes_a_private_env(workdir, fake):
    result = make(workdir, fake, "up", "COMPOSE=docker compose", FAKE_ENGINE="down")
    assert result.returncode != 0
    assert "✗ no Docker engine answers" in result.stdout
    calls = fake["log"].read_text()
    assert "compose" not in calls, "compose must not run when the preflight fails"
    env = workdir / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600, oct(env.stat().st_mode)
    generated = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line and line[0] != "#")
    for secret in ("ROUTER_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD", "ALERT_SINK_TOKEN"):
        assert len(generated[secret]) >= 24, secret


def test_make_up_and_down_with_everything_in_place(workdir, fake, images):
    result = make(workdir, fake, "up", "COMPOSE=docker compose", FAKE_IMAGES_PRESENT=" ".join(images))
    assert result.returncode == 0, result.stdout + result.stderr
    up = [line for line in fake["log"].read_text().splitlines() if " up " in f"{line} "]
    assert up and "GRAFANA_ANONYMOUS=true" in up[-1] and "--wait" in up[-1]
    assert "anonymous viewer" in result.stdout and "make doctor" in result.stdout
    result = make(workdir, fake, "down", "COMPOSE=docker compose")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(" down " in f"{line} " for line in fake["log"].read_text().splitlines())


def test_make_up_off_loopback_turns_anonymous_grafana_off(workdir, fake, images):
    make(workdir, fake, "secrets")
    env = workdir / ".env"
    env.write_text(env.read_text().replace("BIND_ADDRESS=127.0.0.1", "BIND_ADDRESS=192.0.2.10"))
    result = make(workdir, fake, "up", "COMPOSE=docker compose", FAKE_IMAGES_PRESENT=" ".join(images))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BIND_ADDRESS=192.0.2.10 is not loopback: Grafana's anonymous access is off" in result.stdout
    up = [line for line in fake["log"].read_text().splitlines() if " up " in f"{line} "]
    assert "GRAFANA_ANONYMOUS=false" in up[-1]
    assert "anonymous viewer" not in result.stdout


def test_make_help_expands_its_variables(workdir, fake):
    result = make(workdir, fake, "help", "ROUTER_BIND=127.0.0.1:8181")
    assert result.returncode == 0
    assert "$(" not in result.stdout, [line for line in result.stdout.splitlines() if "$(" in line]
    assert "127.0.0.1:8181" in result.stdout
