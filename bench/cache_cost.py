"""What the prediction cache costs and saves, in process: off, miss and hit, 1 and 100 rows.

    .venv/bin/python -m bench.cache_cost [--quick]

Builds an app with `create_app(Settings(...))` over a temp store holding the bench's `lr`
Pipeline (20 named features, StandardScaler + LogisticRegression) and, per row count, times:
  - off:  `serving.runtime.predict.predict` with SERVING_PREDICTION_CACHE=0, against `_compute` (the
          prediction without the cache check), called alternately: the difference is what the
          cache costs when it is off;
  - miss: the cache on, a different input every call (key, lookup, model, store);
  - hit:  the cache on, the same input every call;
  - and the same three through the whole request (the WSGI call gunicorn makes).
Medians in µs of calls made in turns. Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PATH = "/v1/models/lr/predict"


def interleaved_us(fns: dict[str, Callable[[int], Any]], n: int) -> dict[str, float]:
    """Median µs of each function, called in turns (call i gets argument i) so that the
    machine's drift hits all of them alike; the first 50 turns are a warm-up."""
    times: dict[str, list[int]] = {name: [] for name in fns}
    for i in range(n + 50):
        for name, fn in fns.items():
            start = time.perf_counter_ns()
            fn(i)
            if i >= 50:
                times[name].append(time.perf_counter_ns() - start)
    return {name: round(statistics.median(t) / 1000, 2) for name, t in times.items()}


def wsgi_call(app: Any, body: bytes) -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
    }
    seen = []
    out = b"".join(app(environ, lambda status, headers: seen.append((status, headers))))
    if not seen[0][0].startswith("200"):
        raise SystemExit(f"{seen[0][0]}: {out[:300]!r}")


def measure(apps: dict[int, Any], off: Any, on: Any, rows: int, rng: Any, n: int) -> dict:
    from serving.runtime import predict as core

    same = rng.normal(size=(rows, 20)).tolist()
    fresh = [rng.normal(size=(rows, 20)).tolist() for _ in range(2 * (n + 50))]
    features = off.schema.convert(same)
    cell = interleaved_us(
        {
            "off_run": lambda i: core._run(off, features, rows, False),
            "off_compute": lambda i: core._compute(off, features, rows, False),
        },
        n,
    )
    cell["off_cost"] = round(cell["off_run"] - cell["off_compute"], 2)
    cell |= interleaved_us(
        {
            "off_predict": lambda i: core.predict(off, same),
            "miss_predict": lambda i: core.predict(on, fresh[i]),
            "hit_predict": lambda i: core.predict(on, same),
        },
        n,
    )
    body = json.dumps({"instances": same}).encode()
    bodies = [json.dumps({"instances": f}).encode() for f in fresh[n + 50 :]]
    cell |= interleaved_us(
        {
            "off_request": lambda i: wsgi_call(apps[0], body),
            "miss_request": lambda i: wsgi_call(apps[10_000], bodies[i]),
            "hit_request": lambda i: wsgi_call(apps[10_000], body),
        },
        n,
    )
    return {f"{name}_us": value for name, value in cell.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 1000 if args.quick else 5000

    import logging

    from bench.fixtures import build
    from serving.api.state import get_state
    from serving.app import create_app
    from serving.settings import Settings

    logging.disable(logging.CRITICAL)  # the request log line is not what is measured here
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(__file__).resolve().parent.parent)
        store, _ = build(Path(tmp), {**os.environ, "PYTHONPATH": root})
        apps = {}
        for size in (0, 10_000):
            settings = Settings(
                model_store=store,
                data_dir=Path(tmp) / f"data{size}",
                statsd_host=None,
                configure_logging=False,
                start_poller=False,
                log_sample=0.0,
                monitor_flush=0.0,
                prediction_cache=size,
            )
            apps[size] = create_app(settings)
        off = get_state(apps[0]).loader.resolve("lr")
        on = get_state(apps[10_000]).loader.resolve("lr")
        rng = np.random.default_rng(0)
        for rows in (1, 100):
            out[f"{rows}_rows"] = measure(apps, off, on, rows, rng, n)
        for app in apps.values():
            get_state(app).close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
