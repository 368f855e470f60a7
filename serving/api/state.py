"""Per-worker state, hung off the app as `app.extensions["serving"]`."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app

from serving.monitoring.monitor import Monitor
from serving.runtime.loader import ModelLoader
from serving.settings import Settings
from serving.store.base import StoreBase
from serving.telemetry.metrics import Metrics
from serving.telemetry.recorder import Recorder

EXTENSION = "serving"


@dataclass(frozen=True)
class ServingState:
    settings: Settings
    store: StoreBase
    loader: ModelLoader
    metrics: Metrics
    recorder: Recorder = field(default_factory=Recorder)
    monitor: Monitor | None = None  # drift and traffic counts (None: SERVING_MONITOR_FLUSH=0)

    def close(self) -> None:
        """Stop the poll thread and close sockets (tests, and a clean worker exit)."""
        self.loader.stop_polling()
        self.recorder.close()
        if self.monitor is not None:  # a last flush; its database connections closed
            self.monitor.close()
        self.metrics.close()


def get_state(app: Flask | None = None) -> ServingState:
    """The state of `app` (default: the current app)."""
    target = app if app is not None else current_app
    return target.extensions[EXTENSION]  # type: ignore[no-any-return]


def get_monitor(app: Flask | None = None) -> Monitor | None:
    """The drift and traffic monitor of `app` (default: the current app), if it has one."""
    return get_state(app).monitor
