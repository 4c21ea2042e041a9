"""The upstream transport under gevent keeps its connections past 1,024 open files.

A gevent worker holding a thousand calls has a client and an upstream socket for each, so
its descriptors pass 1,024 - where select(), which the HTTP client's pool used to check an
idle connection before reusing it, refuses them: every check failed and every call opened a
new upstream connection (bench: 0.99 new connections per stream at 2,000 streams).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from bench.upstream import UpstreamProcess
from conftest import REPO

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, os, resource, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # what a busy worker holds
    from llm_router.backends.transport import GeventTransport
    transport = GeventTransport(sys.argv[1], pool_size=8, timeout=10)
    statuses = []
    for stream in (False, True) * 5:
        response = transport.request("POST", "/chat/completions", json.dumps(
            {"model": "ok", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {"Content-Type": "application/json"})
        if stream:
            lines = list(response.lines())
        else:
            response.body()
        response.close(complete=True)
        statuses.append(response.status)
    # The descriptors below 1,100 are taken: every socket here lies above select()'s limit.
    print(json.dumps({"statuses": statuses, "lowest_fd": held[-1] + 1}))
""")


def test_idle_connections_are_reused_above_1024_descriptors():
    with UpstreamProcess(delay=0.01, events=3).running() as upstream:
        upstream.reset()
        done = subprocess.run([sys.executable, "-c", SCRIPT, upstream.base_url], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO / "service" / "src")})
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        stats = upstream.stats()
    assert result["statuses"] == [200] * 10
    assert result["lowest_fd"] > 1024, "the test must run past select()'s limit to prove anything"
    assert stats["chat_requests"] == 10
    assert stats["connections_accepted"] == 1, stats  # one connection, reused by answers and streams
