"""The application factory. Nothing happens at import; `create_app` builds everything."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import sklearn
from flask import Flask
from threadpoolctl import threadpool_limits

from serving.api import (
    admin,
    dashboard,
    errors,
    feedback,
    health,
    hooks,
    mlflow,
    openapi,
    prometheus,
    v1,
    v2,
)
from serving.api import monitoring as monitoring_api
from serving.api.state import EXTENSION, ServingState
from serving.monitoring.monitor import make_monitor
from serving.runtime.cache import PredictionCache
from serving.runtime.loader import ModelLoader
from serving.settings import Settings
from serving.store.open import store_from_settings
from serving.telemetry.logs import init_logging
from serving.telemetry.metrics import MetricsGroup, make_metrics
from serving.telemetry.predlog import make_recorder


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    init_runtime(settings)
    init_state(app, settings)
    hooks.register(app)
    prometheus.register(app)
    errors.register(app)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(mlflow.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(monitoring_api.bp)
    app.register_blueprint(dashboard.bp)
    if settings.admin_token:  # no token, no admin API: every /v1/admin path is a 404
        app.register_blueprint(admin.bp)
    return app


def init_runtime(settings: Settings) -> None:
    if settings.configure_logging:
        init_logging(settings.log_level)
    # One BLAS/OpenMP thread per worker: scale with gunicorn workers, not threads.
    threadpool_limits(limits=1)
    # Inputs are checked for NaN/Infinity before they reach a model: skip sklearn's second check.
    sklearn.set_config(assume_finite=True)
    # Models fitted on DataFrames and fed arrays (see Settings.array_input) warn on every call.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")


def init_state(app: Flask, settings: Settings) -> ServingState:
    statsd = make_metrics(settings.statsd_host, settings.statsd_port, settings.statsd_prefix)
    metrics = MetricsGroup(statsd, prometheus.init_app(app, start_sampler=settings.start_poller))
    store = store_from_settings(settings, serve_cached=True)
    size = settings.prediction_cache
    loader = ModelLoader(
        store,
        metrics,
        poll_interval=settings.poll_interval,
        allow_version_mismatch=settings.allow_version_mismatch,
        allow_pickle=settings.allow_pickle,
        pinned_cache_size=settings.pinned_cache_size,
        array_input=settings.array_input,
        kernels=settings.fast_kernels,
        cache=PredictionCache(size, metrics) if size else None,
    )
    loader.refresh()  # a (re)started worker serves the current versions from its first request
    if settings.start_poller:
        loader.ensure_polling()
    dropped = metrics.telemetry_dropped  # telemetry lost while the data store cannot keep up
    recorder = make_recorder(settings, dropped)
    monitor = make_monitor(settings, dropped, store, _held_model(loader))
    state = ServingState(settings, store, loader, metrics, recorder=recorder, monitor=monitor)
    app.extensions[EXTENSION] = state
    return state


def _held_model(loader: ModelLoader) -> Callable[[str, int], Any]:
    """The fitted model of a version this worker holds, or None (for the drift monitor)."""

    def model_of(name: str, version: int) -> Any:
        state = loader.states().get(name)
        loaded = state.versions().get(version) if state is not None else None
        return loaded.model if loaded is not None else None

    return model_of
