"""nginx/router-lb.conf for a test: the file compose runs, with its upstream block replaced
by fixed servers (e.g. router replicas on 127.0.0.1 ports) and its listen port by the test's.

    text = render(["127.0.0.1:18001", "127.0.0.1:18002"], listen="127.0.0.1:18000")
    # nginx -p DIR -c FILE -g "pid DIR/nginx.pid; error_log stderr;"

The test variant has what compose's DNS variant cannot: a static upstream group with an
HTTP/1.1 keep-alive pool. Everything outside the delimited block is the compose file's.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "nginx" / "router-lb.conf"
BLOCK = re.compile(r"(?m)^(?P<indent>[ \t]*)# --- upstream: begin\b[^\n]*\n.*?^[ \t]*# --- upstream: end\b[^\n]*\n", re.S)
LISTEN = re.compile(r"(?m)^(?P<indent>[ \t]*)listen 8080;\n")
UPSTREAM = "router_replicas"


def parts(text: str) -> tuple[str, str]:
    """The upstream block and the listen line of the config (each must occur exactly once)."""
    blocks, listens = list(BLOCK.finditer(text)), list(LISTEN.finditer(text))
    if len(blocks) != 1 or len(listens) != 1:
        raise ValueError(f"{CONFIG}: expected one upstream block and one `listen 8080;` "
                         f"(found {len(blocks)} and {len(listens)})")
    return BLOCK.search(text).group(0), LISTEN.search(text).group(0)


def render(servers: list[str], listen: str, keepalive: int = 32, text: str | None = None) -> str:
    """The config with the upstream block naming `servers` (host:port) and listening on `listen`."""
    text = CONFIG.read_text() if text is None else text
    block, _ = parts(text)
    indent = BLOCK.search(text).group("indent")
    lines = ["# --- upstream: begin (test variant: tests/nginx_lb.py) ---",
             f"upstream {UPSTREAM} {{"]
    lines += [f"    server {server} max_fails=1 fail_timeout=2s;" for server in servers]
    lines += [f"    keepalive {keepalive};", "}",
              "map $server_port $router_upstream {", f"    default {UPSTREAM};", "}",
              "# --- upstream: end ---"]
    replacement = "".join(f"{indent}{line}\n" for line in lines)
    text = text.replace(block, replacement, 1)
    listen_indent = LISTEN.search(text).group("indent")
    return LISTEN.sub(f"{listen_indent}listen {listen};\n", text, count=1)
