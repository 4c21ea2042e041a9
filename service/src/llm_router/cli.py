"""`llm-router`: run the router, or check a configuration file."""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-router", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the router under gunicorn (settings from the environment)")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="extra gunicorn arguments")
    check = commands.add_parser("check-config", help="validate a router configuration file")
    check.add_argument("path", nargs="?", help="defaults to $LLM_ROUTER_CONFIG, then service/config/router.yaml")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        try:
            config = load_config(args.path)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"ok: {len(config.models)} models, {len(config.tenants)} tenants")
        return 0
    try:
        load_config()  # fail here, with the key named, rather than in every worker
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:llm_router.gunicorn_conf", *args.gunicorn_args]
    os.execv(sys.executable, gunicorn)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
