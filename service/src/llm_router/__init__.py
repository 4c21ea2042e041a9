"""An OpenAI-compatible LLM router with Prometheus metrics, JSON logs and OpenTelemetry traces."""

__version__ = "0.1.0"
