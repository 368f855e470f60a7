"""Telemetry: JSON logs, StatsD, Prometheus, the prediction log, its SQLite or PostgreSQL store."""
