"""What the integration tests share: testcontainers settings, why a module skips, images.

Import this before testcontainers: testcontainers reads some settings when imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The image scripts/build-router-image.sh builds (`make test-integration` does both).
ROUTER_IMAGE = os.environ.get("LLM_ROUTER_TEST_IMAGE", "llm-router:test")
# `make test-integration` sets this: there, no Docker or no router image is a failure,
# not a skip (the full-stack module still skips when the stack's images are absent).
REQUIRED = os.environ.get("LLM_ROUTER_INTEGRATION_REQUIRED") == "1"

# Ryuk (the reaper container) is an image to pull, which these machines cannot; every
# test removes its own containers instead. A local engine publishes ports on loopback,
# and these machines look like containers to testcontainers, which would otherwise look
# for the ports at a gateway address.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
if os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def docker_client():
    """A client of a Docker engine that answers, or None."""
    try:
        import docker
    except ImportError:
        return None
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # no socket, no permission, engine down: all mean "no Docker here"
        return None
    return client


def unavailable_reason(*images: str) -> str | None:
    """Why tests that need a Docker engine and these local images cannot run, or None."""
    client = docker_client()
    if client is None:
        return "no Docker engine answers here (run `make test-integration`: it starts one and builds the router image)"
    try:
        missing = [image for image in images if not _has_image(client, image)]
    finally:
        client.close()
    if missing:
        return f"images not present locally: {', '.join(missing)}"
    return None


def _has_image(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=value lines of a compose env file (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def stack_images(env: dict[str, str]) -> list[str]:
    """The pinned images compose.yaml pulls for its default services (not built, no profile)."""
    import yaml

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    images = []
    for service in compose["services"].values():
        if "build" in service or service.get("profiles") or "image" not in service:
            continue
        images.append(_VARIABLE.sub(lambda m: env.get(m.group(1), ""), service["image"]))
    return sorted(set(images))
