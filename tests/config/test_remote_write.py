"""prometheus/examples/prometheus.remote-write.yml (docs/scaling.md): the shipped
prometheus.yml plus a remote_write section to long-term storage, accepted by the real
promtool, with its secret read from a file."""

from __future__ import annotations

import yaml

from toolbox import REPO, promtool, run  # noqa: F401 (a fixture)

EXAMPLE = REPO / "prometheus" / "examples" / "prometheus.remote-write.yml"
SHIPPED = REPO / "prometheus" / "prometheus.yml"


def test_promtool_accepts_the_remote_write_example(promtool):
    result = run(promtool, "check", "config", "--lint=all", "--lint-fatal", EXAMPLE)
    assert "SUCCESS" in result.stdout


def test_the_example_is_the_shipped_config_plus_remote_write():
    example = yaml.safe_load(EXAMPLE.read_text())
    remote_write = example.pop("remote_write")
    assert example == yaml.safe_load(SHIPPED.read_text()), "the example drifted from prometheus/prometheus.yml"
    assert len(remote_write) == 1
    target = remote_write[0]
    assert target["url"].startswith("http") and target["url"].endswith("/api/v1/push")
    # Secrets come from files, never from the config (which is committed and mounted).
    auth = target["basic_auth"]
    assert "password" not in auth and auth["password_file"].startswith("/")
    assert target["queue_config"]["capacity"] >= target["queue_config"]["max_samples_per_send"]
