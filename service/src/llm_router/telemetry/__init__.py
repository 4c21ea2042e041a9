"""The router's three signals: Prometheus metrics, JSON logs and OpenTelemetry traces."""
