"""Telemetry: JSON logs, StatsD, Prometheus, the prediction log, the embedded datastore."""
