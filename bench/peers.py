"""Peers measured with the same scenarios (`make bench-peers`): LiteLLM's proxy.

LiteLLM lives in a venv of its own (`.venv-peers`, git-ignored, ~760 MB), installed by
`make bench-peers` with pip's normal configuration: `litellm[proxy]==1.108.7` (the newest
release whose `proxy` extra resolves here). It runs with no database and no cache,
`--num_workers 2`, and the settings of its production checklist: no access log
(`LITELLM_LOG=ERROR`), `LITELLM_MODE=PRODUCTION`, `LITELLM_TELEMETRY=False`, the local
cost map (`LITELLM_LOCAL_MODEL_COST_MAP=True`: no fetch from the internet at start), and a
master key that clients send as `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from . import procs
from .router import REPO, free_port
from .upstream import raise_nofile_limit

PEERS_VENV = REPO / ".venv-peers"
LITELLM_VERSION = "1.108.7"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
MASTER_KEY = "sk-bench-peers-master"
# Variables of the caller's environment that would give LiteLLM a database, a cache or
# callbacks (none of which is measured here).
_SCRUBBED = ("DATABASE_URL", "REDIS_HOST", "REDIS_URL", "REDIS_PORT", "REDIS_PASSWORD", "LITELLM_MASTER_KEY",
             "STORE_MODEL_IN_DB", "LITELLM_CONFIG_BUCKET_NAME", "OPENAI_API_KEY", "OPENAI_BASE_URL")


def litellm_executable() -> Path:
    return PEERS_VENV / "bin" / "litellm"


def installed_version() -> str | None:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists() or not litellm_executable().exists():
        return None
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


class LiteLLM:
    """LiteLLM's proxy on 127.0.0.1 with one model per answer kind, all on the fake upstream."""

    name = "litellm"

    def __init__(self, workdir: Path, upstream_base_url: str, models: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = MASTER_KEY
        self.workers = workers
        self.dir = workdir / f"litellm-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {
            "model_list": [
                {"model_name": name, "litellm_params": {"model": f"openai/{upstream_model}",
                                                        "api_base": upstream_base_url, "api_key": "unused"}}
                for name, upstream_model in models.items()
            ],
            "general_settings": {"master_key": MASTER_KEY},
            # As the router is configured for the scenarios: no retries, no cache.
            "litellm_settings": {"request_timeout": 60, "num_retries": 0, "cache": False, "set_verbose": False},
            "router_settings": {"num_retries": 0},
        }
        self.config_path = self.dir / "litellm.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "litellm.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        self.env.update({"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "LITELLM_TELEMETRY": "False",
                         "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"})
        self.process: subprocess.Popen | None = None
        self._pids: list[int] = []

    def start(self, timeout: float = 180) -> "LiteLLM":
        self._log = self.log_path.open("wb")
        command = [str(litellm_executable()), "--config", str(self.config_path), "--host", "127.0.0.1",
                   "--port", str(self.port), "--num_workers", str(self.workers)]
        self.process = subprocess.Popen(command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.dir, preexec_fn=raise_nofile_limit)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"litellm exited early:\n{self.tail()}")
                if self._answers():
                    self._pids = procs.tree(self.process.pid)
                    return self
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"litellm not ready in {timeout}s:\n{self.tail()}")

    def _answers(self) -> bool:
        """A real chat completion through the proxy (readiness alone does not load the models)."""
        body = json.dumps({"model": next(iter(self._model_names())), "messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(f"{self.url}/v1/chat/completions", data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status == 200 and b'"usage"' in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def _model_names(self) -> list[str]:
        return [m["model_name"] for m in yaml.safe_load(self.config_path.read_text())["model_list"]]

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return procs.tree(self.process.pid) if self.process and self.process.poll() is None else []

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes: the children of the proxy's first process."""
        if not self.process or self.process.poll() is not None:
            return []
        return sorted(procs.children(self.process.pid))

    def stop(self, timeout: float = 20) -> float:
        if self.process is None:
            return 0.0
        started = time.monotonic()
        pids = [(pid, procs.start_time(pid)) for pid in (self.pids() or self._pids)]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Workers that outlived their parent: only the ones this proxy started.
        for pid, started_at in pids:
            if pid != self.process.pid:
                procs.kill_if_same(pid, started_at, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return time.monotonic() - started


def install() -> int:
    """Create .venv-peers and install the pinned LiteLLM proxy into it (pip, its normal
    configuration); nothing to do when that version is there already."""
    import sys

    if installed_version() == LITELLM_VERSION:
        print(f"LiteLLM {LITELLM_VERSION} already in {PEERS_VENV}")
        return 0
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_REQUIREMENT],
                   check=True)
    version = installed_version()
    if version != LITELLM_VERSION:
        print(f"installed LiteLLM {version!r}, wanted {LITELLM_VERSION}", file=sys.stderr)
        return 1
    print(f"LiteLLM {version} installed in {PEERS_VENV}")
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python -m bench.peers --install")
    sys.exit(install())
