"""`llm-router`: run the router, check a configuration file, run the local alert sink,
summarise a time range from Prometheus, or check a running stack end to end (doctor)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config
from .report import add_arguments as add_report_arguments
from .report import run as run_report
from .state import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-router", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the router under gunicorn (settings from the environment)")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="extra gunicorn arguments")
    check = commands.add_parser("check-config", help="validate a router configuration file")
    check.add_argument("path", nargs="?", help="defaults to $LLM_ROUTER_CONFIG, then service/config/router.yaml")
    sink = commands.add_parser("alert-sink", help="run the local Alertmanager webhook sink under gunicorn")
    sink.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="extra gunicorn arguments")
    report = commands.add_parser(
        "report", help="summarise a time range from Prometheus (traffic, errors, latency, cost, Apdex...)",
        description="Summarise a time range from Prometheus' HTTP API; counts and costs are exact. "
                    "See docs/report.md.",
    )
    add_report_arguments(report)
    doctor = commands.add_parser(
        "doctor", help="check a running stack end to end: tagged traffic in, then what each backend saw",
        description="Send a little tagged traffic through the router, then ask Prometheus, Alertmanager, the "
                    "alert sink, Loki, Jaeger, Grafana and Fluent Bit what they saw. Exit 1 when a check fails.",
    )
    from .doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(doctor)
    args = parser.parse_args(argv)

    if args.command == "check-config":
        try:
            config = load_config(args.path)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"ok: {len(config.models)} models, {len(config.tenants)} tenants")
        return 0
    if args.command == "report":
        return run_report(args, report)
    if args.command == "alert-sink":
        return _alert_sink(args.gunicorn_args)
    if args.command == "doctor":
        from .doctor import run as run_doctor

        return run_doctor(args)
    try:
        config = load_config()  # fail here, with the key named, rather than in every worker
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    try:
        _check_state_file(config)  # a corrupt file: one line, not a worker boot loop
    except StoreError as error:
        print(error, file=sys.stderr)
        return 1
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:llm_router.gunicorn_conf", *args.gunicorn_args]
    os.execv(sys.executable, gunicorn)
    return 0  # pragma: no cover - execv does not return


def _check_state_file(config) -> None:
    """The SQLite state file the workers will open, checked before gunicorn starts them
    (PostgreSQL is checked by each worker as it connects)."""
    from .state import check_sqlite_file, sqlite_path, state_url

    path = sqlite_path(state_url(config.state.url))
    if path is not None:
        check_sqlite_file(path)


def _alert_sink(gunicorn_args: list[str]) -> int:
    from .alertsink import capacity_from_env, max_bytes_from_env, receivers_from_env, token_from_env

    try:
        # bad settings fail here, not in the worker
        receivers_from_env(), capacity_from_env(), max_bytes_from_env(), token_from_env()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:llm_router.alertsink_gunicorn_conf", *gunicorn_args]
    os.execv(sys.executable, gunicorn)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
