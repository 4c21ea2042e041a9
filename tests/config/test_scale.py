"""Compose profile `scale` (router replicas on PostgreSQL behind nginx) and the load
balancer's config, nginx/router-lb.conf:

- the resolved compose model (the real compose CLI, test_compose.py's fixtures) wires the
  replicas, PostgreSQL, its exporter, nginx and Prometheus's DNS discovery together;
- Debian's nginx accepts the file compose runs and the variant tests/nginx_lb.py renders for
  a live test (`nginx -t`), and the variant differs from it only in the delimited block;
- a short run of that variant on 127.0.0.1 in front of two streaming stub servers: each
  event reaches the client as it is written, requests alternate between the servers over
  kept-alive connections, and a server that is gone is skipped. (That events flow does not
  prove `proxy_buffering off` by itself: nginx forwards what it has either way while the
  client keeps up; the static check asserts the directive.)
"""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

import nginx_lb
from test_compose import env_file, models, services  # noqa: F401 (fixtures)
from toolbox import REPO

CONF = REPO / "nginx" / "router-lb.conf"


def directive(text: str, name: str) -> list[str]:
    """The arguments of every `name ...;` directive in an nginx config (comments dropped)."""
    text = re.sub(r"(?m)#.*$", "", text)
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^\s*{re.escape(name)}\s+([^;{{]*);", text)]


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", value)
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# --- the compose model --------------------------------------------------------------------

def test_replicas_are_the_router_image_on_postgres(services):
    replica, router, postgres = services["router-replica"], services["router"], services["postgres"]
    assert replica["image"] == router["image"] and replica["build"] == router["build"]
    assert replica["deploy"]["replicas"] >= 2
    assert not replica.get("ports"), "replicas are reached through the balancer, never published"
    environment = replica["environment"]
    url = environment["LLM_ROUTER_STATE_URL"]
    match = re.fullmatch(r"postgresql://(\w+)@postgres:5432/(\w+)", url)
    assert match, url
    assert (match.group(1), match.group(2)) == (postgres["environment"]["POSTGRES_USER"],
                                                postgres["environment"]["POSTGRES_DB"])
    assert environment["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"] != ""
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Each replica's journal on a volume of its own (anonymous: one per container).
    state = [v for v in replica["volumes"] if v["target"] == "/var/lib/llm-router"]
    assert state and state[0]["type"] == "volume" and not state[0].get("source")
    assert int(replica["stop_grace_period"].rstrip("s")) > 20 + 5, "gunicorn's graceful timeout and the flush"


def test_postgres_keeps_its_data_and_reports_health(models, services):
    postgres = services["postgres"]
    data = [v for v in postgres["volumes"] if v["target"] == "/var/lib/postgresql/data"]
    assert data and data[0]["type"] == "volume" and data[0]["source"] in models["scale"]["volumes"]
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and postgres["environment"]["POSTGRES_USER"] in test
    exporter = services["postgres-exporter"]
    assert exporter["environment"]["DATA_SOURCE_PASS"] == postgres["environment"]["POSTGRES_PASSWORD"]


def test_prometheus_finds_every_replica_and_the_exporter(services):
    prometheus = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    replica = services["router-replica"]
    metrics_port = int(replica["environment"]["LLM_ROUTER_METRICS_BIND"].rsplit(":", 1)[1])
    dns = jobs["llm-router"]["dns_sd_configs"]
    assert {"names": ["router-replica"], "type": "A", "port": metrics_port} in dns, \
        "the replicas belong to job llm-router (the rules' selector), one target per replica"
    assert str(metrics_port) in replica["expose"]
    exporter = jobs["postgres-exporter"]["dns_sd_configs"][0]
    assert exporter["names"] == ["postgres-exporter"] and str(exporter["port"]) in services["postgres-exporter"]["expose"]


def test_balancer_runs_the_repository_config(services):
    balancer = services["router-lb"]
    (mount,) = [v for v in balancer["volumes"] if v["target"] == "/etc/nginx/nginx.conf"]
    assert Path(mount["source"]) == CONF and mount["read_only"] is True
    text = CONF.read_text()
    (listen,) = directive(text, "listen")
    assert [int(p["target"]) for p in balancer["ports"]] == [int(listen)]
    # The compose block resolves the replicas through Docker's DNS, at their API port.
    block, _ = nginx_lb.parts(text)
    assert directive(block, "resolver")[0].split()[0] == "127.0.0.11"
    (default,) = re.findall(r"default\s+([^;]+);", block)
    host, port = default.split(":")
    assert host == "router-replica" and port in services["router-replica"]["expose"]
    assert balancer["depends_on"]["router-replica"]["condition"] == "service_healthy"
    # pid and the error log come from the command line (the file sets neither, so a test can).
    assert not directive(text, "pid") and not directive(text, "error_log")


def test_balancer_suits_long_streams():
    text = CONF.read_text()
    assert directive(text, "proxy_buffering") == ["off"], "server-sent events must not wait in a buffer"
    assert directive(text, "proxy_request_buffering") == ["off"]
    assert directive(text, "proxy_http_version") == ["1.1"]
    assert 'Connection ""' in directive(text, "proxy_set_header"), "keep-alive to the upstream"
    # A request may wait on up to max_backends backends in turn before its first byte.
    router = yaml.safe_load((REPO / "service" / "config" / "router.yaml").read_text())
    worst = max(m["timeout_seconds"] for m in router["models"]) * router["routing"]["max_backends"]
    (read_timeout,) = directive(text, "proxy_read_timeout")
    assert seconds(read_timeout) >= worst, f"proxy_read_timeout {read_timeout} < {worst}s"
    # Retried on another replica only before the request was sent (no non_idempotent).
    (next_upstream,) = directive(text, "proxy_next_upstream")
    assert "error" in next_upstream and "non_idempotent" not in next_upstream


# --- nginx -t, and the rendered variant -------------------------------------------------------

@pytest.fixture(scope="session")
def nginx() -> str:
    path = shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx")
    if not path:
        pytest.skip("no nginx binary: install Debian's nginx (`apt-get install nginx`; .ci/run does)")
    return path


def nginx_test(nginx: str, config: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([nginx, "-t", "-q", "-p", str(prefix), "-c", str(config),
                           "-g", f"pid {prefix}/nginx.pid; error_log stderr;"],
                          capture_output=True, text=True, timeout=30)


def test_compose_config_passes_nginx_t(nginx, tmp_path):
    result = nginx_test(nginx, CONF, tmp_path)
    assert result.returncode == 0, result.stderr


def test_rendered_variant_passes_nginx_t_and_differs_only_in_the_block(nginx, tmp_path):
    text = nginx_lb.render(["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"], listen="127.0.0.1:18000")
    config = tmp_path / "router-lb.conf"
    config.write_text(text)
    result = nginx_test(nginx, config, tmp_path)
    assert result.returncode == 0, result.stderr
    original = CONF.read_text()
    block, listen = nginx_lb.parts(original)
    rendered_block = nginx_lb.BLOCK.search(text).group(0)
    assert text.replace(rendered_block, "BLOCK").replace("listen 127.0.0.1:18000;", "listen 8080;") == \
        original.replace(block, "BLOCK")
    assert directive(rendered_block, "server") == [f"127.0.0.1:1800{i} max_fails=1 fail_timeout=2s" for i in (1, 2, 3)]
    assert directive(rendered_block, "keepalive") == ["32"]


def test_a_broken_variant_fails_nginx_t(nginx, tmp_path):
    config = tmp_path / "broken.conf"
    config.write_text(nginx_lb.render(["127.0.0.1:18001"], listen="127.0.0.1:18000").replace("proxy_buffering off;",
                                                                                              "proxy_buffering maybe;"))
    assert nginx_test(nginx, config, tmp_path).returncode != 0
    with pytest.raises(ValueError):
        nginx_lb.render(["127.0.0.1:1"], "127.0.0.1:2", text="events {}\nhttp {}\n")


# --- a short live run of the rendered variant ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stub(http.server.ThreadingHTTPServer):
    """A stand-in replica: GET /stream sends `data: <name> <i>` events 0.3 s apart; /healthz 200."""

    daemon_threads = True

    def __init__(self, name: str):
        self.name, self.connections = name, 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                stub.connections += 1
                super().setup()

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(3):
                        chunk = f"data: {stub.name} {i}\n\n".encode()
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.3)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                body = stub.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def stop(self):
        self.shutdown()
        self.server_close()


def test_rendered_variant_streams_balances_and_skips_a_dead_replica(nginx, tmp_path):
    stubs = [Stub("a"), Stub("b")]
    dead = free_port()  # nothing listens here: a replica that is gone
    port = free_port()
    config = tmp_path / "router-lb.conf"
    config.write_text(nginx_lb.render([s.address for s in stubs] + [f"127.0.0.1:{dead}"], listen=f"127.0.0.1:{port}"))
    log = (tmp_path / "nginx.log").open("w")
    process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(config),
                                "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log stderr;"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "nginx.log").read_text()
                time.sleep(0.05)
        # Streamed: the first event arrives while the stub is still writing the rest.
        started = time.monotonic()
        with requests.get(f"{url}/stream", stream=True, timeout=10) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            first_at = time.monotonic() - started
            rest = [line for line in lines if line]
        total = time.monotonic() - started
        assert first.startswith(b"data: ") and len(rest) == 2
        assert first_at < 0.3 < total, f"first event after {first_at:.2f}s of {total:.2f}s: held until the end"
        # Balanced over both live stubs, never failing on the dead one (the next server is tried).
        answers = [requests.get(f"{url}/healthz", timeout=5) for _ in range(12)]
        assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
        assert {a.text for a in answers} == {"a", "b"}
        # Kept alive: 13 requests, far fewer upstream connections.
        assert sum(s.connections for s in stubs) < 13, [s.connections for s in stubs]
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        for stub in stubs:
            stub.stop()
