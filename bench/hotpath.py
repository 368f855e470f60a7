"""In-process costs, no HTTP: the `predict` floor and the hot path of one request, part by part.

Every part calls the real function from `serving` on an app built by `create_app(Settings(...))`
with StatsD on (a local UDP socket), the prediction log on (SQLite in a temp dir) and the JSON
request log going to /dev/null. Each figure is the median of many timed calls. bench/run.py runs
this module in its own process:

    python -m bench.hotpath --store S --body1 B1 --body100 B100 --statsd-port P \
        --data-dir D --out OUT [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WARMUP = 20
_MIN_SAMPLES = 30
PREDICT_PATH = "/v1/models/{}/predict"


@dataclass(frozen=True)
class Timer:
    """Median wall time of `fn` over up to `max_iter` calls or `budget_s` seconds."""

    budget_s: float
    max_iter: int

    def median_us(self, fn: Callable[..., Any], setup: Callable[[], tuple] | None = None) -> float:
        for _ in range(_WARMUP):
            fn(*(setup() if setup else ()))
        samples: list[int] = []
        deadline = time.perf_counter() + self.budget_s
        while len(samples) < self.max_iter and (
            len(samples) < _MIN_SAMPLES or time.perf_counter() < deadline
        ):
            args = setup() if setup else ()
            start = time.perf_counter_ns()
            fn(*args)
            samples.append(time.perf_counter_ns() - start)
        return round(statistics.median(samples) / 1000, 1)


def make_app(store: Path, statsd_port: int, data_dir: Path) -> Any:
    from serving.app import create_app
    from serving.settings import Settings

    settings = Settings(
        model_store=store,
        statsd_host="127.0.0.1",
        statsd_port=statsd_port,
        statsd_prefix="bench",
        data_dir=data_dir,
        start_poller=False,
    )
    app = create_app(settings)  # configures the JSON logging of serving.telemetry.logs
    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    for handler in logging.getLogger().handlers:
        handler.setStream(devnull)  # type: ignore[attr-defined]
    return app


def floor(app: Any, bodies: dict[int, bytes], timer: Timer) -> list[dict[str, Any]]:
    """model.predict on what the server feeds it (the output of InputSchema.convert)."""
    import orjson
    import pandas as pd

    from bench.fixtures import MODELS
    from serving.api.state import get_state

    out = []
    for name in MODELS:
        loaded = get_state(app).loader.resolve(name)
        for rows, body in bodies.items():
            features = loaded.schema.convert(orjson.loads(body)["instances"])
            frame = pd.DataFrame(features, columns=loaded.schema.names)
            out.append(
                {
                    "model": name,
                    "rows": rows,
                    "input": "frame" if loaded.schema.frame else "array",
                    "predict_us": timer.median_us(lambda m=loaded.model, x=features: m.predict(x)),
                    "predict_dataframe_us": timer.median_us(
                        lambda m=loaded.model, x=frame: m.predict(x)
                    ),
                }
            )
    return out


def _request(body: bytes) -> Any:
    from flask import Request
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        path=PREDICT_PATH.format("lr"), method="POST", data=body, content_type="application/json"
    )
    return Request(builder.get_environ())


def _log_line(log: logging.Logger, request_id: str, rows: int) -> None:
    """The request line as serving.api.hooks writes it."""
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": "POST",
            "path": PREDICT_PATH.format("lr"),
            "status": 200,
            "model": "lr",
            "version": 1,
            "alias": "production",
            "variant": None,
            "rows": rows,
            "duration_ms": 1.234,
        },
    )


def parts(app: Any, body: bytes, timer: Timer) -> dict[str, float]:
    """Each part of one predict request on the LR model, in the order the server runs them."""
    from serving.api.jsonio import json_response, read_json
    from serving.api.schemas import PredictRequestSchema
    from serving.api.state import get_state

    loader, envelope = get_state(app).loader, PredictRequestSchema()
    loaded = loader.choose("lr", "production", None).loaded
    with app.app_context():
        payload, bools = read_json(_request(body))
        instances = envelope.load(payload)["instances"]
        features = loaded.schema.convert(instances, bools)
        measured = {
            "parse (read_json: orjson)": timer.median_us(read_json, lambda: (_request(body),)),
            "envelope (marshmallow load)": timer.median_us(lambda: envelope.load(payload)),
            "route (loader.choose)": timer.median_us(lambda: loader.choose("lr", "production")),
            "validate+convert (InputSchema.convert)": timer.median_us(
                lambda: loaded.schema.convert(instances, bools)
            ),
            f"predict ({loaded.runtime}: runner.predict)": timer.median_us(
                lambda: loaded.runner.predict(features)
            ),
        }
        return measured | _after_predict(app, loaded, instances, timer, json_response)


def _after_predict(
    app: Any, loaded: Any, instances: list[Any], timer: Timer, json_response: Any
) -> dict[str, float]:
    """What follows the model: the response body, then the after-request bookkeeping."""
    from serving.api.state import get_monitor, get_state
    from serving.runtime.predict import predict
    from serving.telemetry.recorder import PredictionRecord

    state, log = get_state(app), logging.getLogger("serving.request")
    monitor = get_monitor(app)
    assert monitor is not None, "bench apps keep SERVING_MONITOR_FLUSH on"
    result = predict(loaded, instances)
    counts, response_body = result.class_counts(), {**result.body(), "request_id": "x" * 32}

    def record() -> None:
        state.recorder.record(
            PredictionRecord(
                request_id=uuid.uuid4().hex, at=time.time(), model="lr", version=1,
                alias="production", variant=None, status=200, latency_ms=1.234,
                rows=result.rows, inputs=instances, outputs=result.predictions,
            )
        )  # fmt: skip

    return {
        "class counts (PredictionResult.class_counts)": timer.median_us(result.class_counts),
        "serialise (json_response: orjson)": timer.median_us(lambda: json_response(response_body)),
        "metrics (StatsdMetrics.request, UDP)": timer.median_us(
            lambda: state.metrics.request(200, 1.234, "lr", 1, counts)
        ),
        "prediction log (recorder.record: enqueue)": timer.median_us(record),
        "drift monitor (Monitor.record: enqueue)": timer.median_us(
            lambda: monitor.record("lr", 1, result.features, result.predictions, None)
        ),
        "dashboard traffic count (Monitor.count: enqueue)": timer.median_us(
            lambda: monitor.count("lr", 1, None, 200, 1.234)
        ),
        "log (JSON line to /dev/null)": timer.median_us(
            lambda: _log_line(log, uuid.uuid4().hex, result.rows)
        ),
    }


def full_requests(app: Any, body: bytes, timer: Timer) -> dict[str, float]:
    """The whole request: through the test client, and as the one WSGI call gunicorn makes."""
    from werkzeug.test import EnvironBuilder

    client = app.test_client()
    path = PREDICT_PATH.format("lr")
    status = client.post(path, data=body, content_type="application/json").status_code
    if status != 200:
        raise SystemExit(f"the test client got {status} from {path}")
    environ = EnvironBuilder(
        path=path, method="POST", data=body, content_type="application/json"
    ).get_environ()

    def wsgi_call(env: dict[str, Any]) -> None:
        response = app(env, lambda status, headers, exc_info=None: None)
        b"".join(response)
        response.close()

    return {
        "full request: Flask test client": timer.median_us(
            lambda: client.post(path, data=body, content_type="application/json")
        ),
        "full request: one WSGI call (what gunicorn calls)": timer.median_us(
            wsgi_call, setup=lambda: ({**environ, "wsgi.input": io.BytesIO(body)},)
        ),
    }


def _sklearn_us(app: Any, body: bytes, timer: Timer) -> float:
    """What `model.predict` would cost where a numpy kernel answers instead."""
    import orjson

    from serving.api.state import get_state

    loaded = get_state(app).loader.choose("lr", "production").loaded
    features = loaded.schema.convert(orjson.loads(body)["instances"])
    return timer.median_us(lambda: loaded.model.predict(features))


def _binning_us(app: Any, body: bytes) -> float:
    """The drift monitor's flusher thread: binning one request's inputs and outputs (µs, the
    mean over 2,000 queued requests), off the request path."""
    import orjson

    from serving.api.state import get_monitor, get_state
    from serving.runtime.predict import predict

    monitor = get_monitor(app)
    assert monitor is not None
    loaded = get_state(app).loader.choose("lr", "production").loaded
    result = predict(loaded, orjson.loads(body)["instances"])
    monitor.flush()
    for _ in range(2000):
        monitor.record("lr", 1, result.features, result.predictions, None)
    started = time.perf_counter()
    monitor.accumulate()
    return round((time.perf_counter() - started) / 2000 * 1e6, 1)


def breakdown(app: Any, bodies: dict[int, bytes], timer: Timer) -> list[dict[str, Any]]:
    """One row per part, one column per request size (rows_1, rows_100)."""
    columns = {}
    for rows, body in bodies.items():
        measured = parts(app, body, timer)
        measured["sum of the parts"] = round(sum(measured.values()), 1)
        measured["(not in the sum) scikit-learn's own predict, for comparison"] = _sklearn_us(
            app, body, timer
        )
        measured["(not in the sum) drift binning per request, in the flusher thread"] = _binning_us(
            app, body
        )
        columns[rows] = {**measured, **full_requests(app, body, timer)}
    names = list(columns[next(iter(columns))])
    return [{"part": n, **{f"rows_{r}": columns[r][n] for r in columns}} for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--body1", type=Path, required=True)
    parser.add_argument("--body100", type=Path, required=True)
    parser.add_argument("--statsd-port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="for the prediction log")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    timer = Timer(0.25, 1000) if args.quick else Timer(1.0, 5000)
    app = make_app(args.store, args.statsd_port, args.data_dir)
    bodies = {1: args.body1.read_bytes(), 100: args.body100.read_bytes()}
    report = {
        "timer": {"budget_s_per_figure": timer.budget_s, "max_iterations": timer.max_iter},
        "floor": floor(app, bodies, timer),
        "breakdown": breakdown(app, bodies, timer),
    }
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
