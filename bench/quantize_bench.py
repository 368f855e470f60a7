"""Does `serving optimize --quantize` pay? FP32 ONNX against int8 ONNX, in process, no HTTP.

    .venv/bin/python -m bench.quantize_bench [--quick]

Trains a few MLPClassifier Pipelines (StandardScaler + MLP, features x hidden layers) and a
LogisticRegression on 1,000 features, registers each in a temp store and runs the real verb
(`serving.compile.onnx.optimize`, with and without `QuantGate`). For every model: artifact
sizes, the gate's measured figures, and the median time of the serving object
(`OnnxModel.predict_proba`, which casts the float64 rows to float32 as the server does) on 1
and 100 rows, FP32 vs int8, plus scikit-learn's own `predict_proba` for scale. Prints a table;
writes
bench/results/quantize.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "quantize.json"
# (name, features, hidden layers); hidden=None is a LogisticRegression.
HEADER = (
    "| model | ONNX bytes fp32 → int8 | 1 row µs: sklearn, fp32, int8 | 100 rows: fp32, int8 "
    "| label agreement | Δp max, p99 | gate |\n" + "| --- " * 7 + "|"
)
CASES = [
    ("mlp 20f 64x64", 20, (64, 64)),
    ("mlp 100f 256x256", 100, (256, 256)),
    ("mlp 300f 512x512", 300, (512, 512)),
    ("logreg 1000f", 1000, None),
]


def median_us(fn: Callable[[], Any], budget_s: float) -> float:
    for _ in range(50):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 200 or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return round(statistics.median(samples) / 1000, 1)


def train(features: int, hidden: tuple[int, ...] | None, root: Path) -> tuple[Path, Path]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(3000, features)))
    frame.columns = [f"f{i}" for i in range(features)]
    target = np.where(frame.to_numpy() @ rng.normal(size=features) > 0, "yes", "no")
    final = (
        LogisticRegression(max_iter=500)
        if hidden is None
        else MLPClassifier(hidden, max_iter=200, early_stopping=True, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: accuracy is not the point here
        model = Pipeline([("scale", StandardScaler()), ("clf", final)]).fit(frame, target)
    artifact, reference = root / f"m{features}.joblib", root / f"m{features}.csv"
    joblib.dump(model, artifact)
    frame.head(500).to_csv(reference, index=False)
    return artifact, reference


def measure(name: str, features: int, hidden: Any, root: Path, budget_s: float) -> dict[str, Any]:
    from serving.compile.onnx import OnnxModel, optimize
    from serving.compile.quantize import QuantGate, quantize_model
    from serving.errors import StoreError
    from serving.runtime import artifacts
    from serving.store.model_store import ModelStore

    store = ModelStore(root / "store")
    artifact, reference = train(features, hidden, root)
    store.register(name.replace(" ", "_"), artifact, reference, actor="bench")
    model_name = name.replace(" ", "_")
    fp32, _ = optimize(store, model_name, 1, "bench")
    out: dict[str, Any] = {"model": name, "features": features, "hidden": hidden}
    try:
        int8, report = optimize(store, model_name, 1, "bench", QuantGate())
    except StoreError as exc:
        out["refused"] = str(exc)
        int8, report = None, getattr(exc, "report", None)
    rows = np.random.default_rng(1).normal(size=(100, features))
    out["gate"] = "passed" if int8 is not None else out["refused"]
    loaded = {}
    for label, version in (("sklearn", 1), ("fp32", fp32)):
        meta = store.read_metadata(model_name, version)
        folder = store.version_dir(model_name, version)
        loaded[label] = artifacts.load_version(folder, meta, False)
        out[f"{label}_bytes"] = meta["size_bytes"]
    fp32_bytes = (store.version_dir(model_name, fp32) / "model.onnx").read_bytes()
    try:  # timed even when the gate refused it: the question here is speed
        int8_bytes, _ = quantize_model(fp32_bytes, name)
        meta = store.read_metadata(model_name, 1)
        loaded["int8"] = OnnxModel(int8_bytes, "classifier", meta["classes"])
        out["int8_bytes"] = len(int8_bytes)
    except StoreError:
        pass
    for label, model in loaded.items():
        x1, x100 = rows[:1], rows  # float64 arrays, as the server feeds numeric models
        out[f"{label}_1row_us"] = median_us(lambda m=model, x=x1: m.predict_proba(x), budget_s)
        out[f"{label}_100rows_us"] = median_us(lambda m=model, x=x100: m.predict_proba(x), budget_s)
    if report is not None:
        out["label_agreement"] = report["label_agreement"]
        out["proba_max_abs_diff"] = round(report["proba_max_abs_diff"], 5)
        out["proba_mean_abs_diff"] = round(report["proba_mean_abs_diff"], 5)
        out["proba_p99_abs_diff"] = round(report["proba_p99_abs_diff"], 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per timing instead of 2 s")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # one thread, as in a server worker
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, features, hidden) in enumerate(CASES):
            root = Path(tmp) / str(i)
            root.mkdir()
            results.append(measure(name, features, hidden, root, 0.3 if args.quick else 2.0))
            print(json.dumps(results[-1]), flush=True)
    print()
    print(HEADER)
    for r in results:
        int8 = (r.get("int8_bytes"), r.get("int8_1row_us"), r.get("int8_100rows_us"))
        print(
            f"| {r['model']} | {r['fp32_bytes']} → {int8[0] or '—'} | {r['sklearn_1row_us']}, "
            f"{r['fp32_1row_us']}, {int8[1] or '—'} | {r['fp32_100rows_us']}, {int8[2] or '—'} | "
            f"{r.get('label_agreement', '—')} | {r.get('proba_max_abs_diff', '—')}, "
            f"{r.get('proba_p99_abs_diff', '—')} | "
            f"{'passed' if 'refused' not in r else 'refused'} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
