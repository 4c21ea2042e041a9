#!/usr/bin/env python3
"""Check what `make up` / `make down` need before running compose, and say what to do.

    python3 scripts/preflight.py up   --compose "docker compose" [--profile load ...] [--env-file .env]
    python3 scripts/preflight.py down --compose "docker compose"

Checks, in order (a later check needs the earlier ones): the docker CLI is installed, a
Docker engine answers, the compose command is compose v2, and (for `up`) every pinned image
the chosen profiles use is present locally or can be pulled. Prints one line per check,
`✓` or `✗`, and for each problem what to do; exits 1 if there is any. Standard library only:
it runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ENGINE_TIMEOUT = 20  # seconds for `docker info`
PULL_CHECK_TIMEOUT = 30  # seconds to ask a registry about one image


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"no answer within {timeout:.0f}s")
    except OSError as error:
        return subprocess.CompletedProcess(command, 127, "", str(error))


def first_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {result.returncode}"


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, text: str) -> None:
        print(f"  ✓ {text}")

    def problem(self, text: str, todo: str) -> None:
        self.problems += 1
        print(f"  ✗ {text}\n      → {todo}")


def check_docker(report: Report) -> bool:
    if shutil.which("docker") is None:
        report.problem("the docker CLI is not installed",
                       "install Docker Engine or Docker Desktop (https://docs.docker.com/engine/install/)")
        return False
    info = run(["docker", "info", "--format", "{{.ServerVersion}}"], ENGINE_TIMEOUT)
    if info.returncode != 0 or not info.stdout.strip():
        report.problem(f"no Docker engine answers ({first_line(info)})",
                       "start it (Docker Desktop, or `sudo systemctl start docker`); without systemd, as root: "
                       "scripts/docker-engine.sh; check DOCKER_HOST and that your user may use the socket")
        return False
    report.ok(f"Docker engine {info.stdout.strip()} answers")
    return True


def check_compose(report: Report, compose: list[str]) -> bool:
    version = run([*compose, "version", "--short"], 30)
    text = version.stdout.strip().lstrip("v")
    if version.returncode != 0 or not text[:1].isdigit() or int(text.split(".")[0]) < 2:
        found = f"`{shlex.join(compose)} version` says: {first_line(version)}" if version.returncode else f"version {text}"
        report.problem(f"compose v2 is not available ({found})",
                       "install the docker compose v2 plugin (docker-compose-plugin), or run `make tools`, which "
                       "installs one into .tools/ that `make up` then uses")
        return False
    report.ok(f"compose {text} ({shlex.join(compose)})")
    return True


def pinned_images(compose: list[str], profiles: list[str], env_file: str | None) -> list[str] | str:
    """The images of the chosen services that compose pulls (services it builds excluded),
    or the error compose printed."""
    command = [*compose, *(["--env-file", env_file] if env_file else [])]
    for profile in profiles:
        command += ["--profile", profile]
    result = run([*command, "config", "--format", "json"], 60)
    if result.returncode != 0:
        return first_line(result)
    services = json.loads(result.stdout).get("services", {})
    return sorted({s["image"] for s in services.values() if "image" in s and "build" not in s})


def image_state(image: str) -> tuple[str, str]:
    """("present" | "pullable" | "missing", detail)."""
    if run(["docker", "image", "inspect", "--format", "{{.Id}}", image], 30).returncode == 0:
        return "present", ""
    manifest = run(["docker", "manifest", "inspect", image], PULL_CHECK_TIMEOUT)
    if manifest.returncode == 0:
        return "pullable", ""
    return "missing", first_line(manifest)


def check_images(report: Report, compose: list[str], profiles: list[str], env_file: str | None) -> None:
    images = pinned_images(compose, profiles, env_file)
    if isinstance(images, str):
        report.problem(f"compose cannot read the stack's configuration ({images})",
                       "fix the variable or file it names (versions and ports live in .env)")
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        states = dict(zip(images, pool.map(image_state, images)))
    present = [image for image, (state, _) in states.items() if state == "present"]
    pullable = [image for image, (state, _) in states.items() if state == "pullable"]
    if present:
        report.ok(f"{len(present)} of {len(images)} pinned images present")
    if pullable:
        report.ok(f"{len(pullable)} to pull: {', '.join(pullable)}")
    for image, (state, detail) in states.items():
        if state == "missing":
            report.problem(f"image {image} is not present and cannot be pulled ({detail})",
                           f"check registry access (`docker pull {image}` shows why); on an offline host, "
                           f"`docker load` it from a saved copy, or change its version in .env")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--compose", default="docker compose", help="the compose command (default: %(default)s)")
    parser.add_argument("--profile", action="append", default=[], help="a compose profile `up` starts")
    parser.add_argument("--env-file", help="the env file compose reads (default: .env beside compose.yaml)")
    args = parser.parse_args(argv)
    compose = shlex.split(args.compose)
    if not compose:
        parser.error("--compose is empty")

    print(f"preflight for `make {args.action}`:")
    report = Report()
    if check_docker(report) and check_compose(report, compose) and args.action == "up":
        check_images(report, compose, [p for p in args.profile if p], args.env_file)
    if report.problems:
        print(f"{report.problems} problem(s): `make {args.action}` stopped before running compose.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
