"""The WSGI entry point gunicorn loads in each worker (no preloading: every worker builds
its own app, so thread pools and exporters start after the fork)."""

from .app import create_app

app = create_app()
