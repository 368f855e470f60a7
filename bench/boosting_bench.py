"""Does `serving optimize --onnx` pay for gradient boosting? Library predict against ONNX Runtime.

    .venv/bin/python -m bench.boosting_bench [--quick] [--rounds N]

Trains a HistGradientBoostingClassifier, an LGBMClassifier and an XGBClassifier (binary, 20
features, 100 trees each, fitted on a DataFrame with 10% missing values), registers each in a
temp store and runs the real verb (`serving.compile.onnx.optimize`, parity gate included). Then,
in process on one thread, the serving objects of both versions (as a worker loads them) answer
`predict` on 1 and 100 float64 rows, fed as the server feeds them (`serving.runtime.prepare`
picks a bare array where the model answers it as it does a DataFrame): per round each cell is
timed for a budget and its median kept, the cells in a rotating order; the table shows the
median over rounds, library and ONNX side by side. Prints a Markdown table; writes
bench/results/boosting.json (git-ignored).
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
RESULTS = ROOT / "bench" / "results" / "boosting.json"
FEATURES = 20
TREES = 100
ROW_COUNTS = (1, 100)
HEADER = (
    "| model | 1 row: library µs | ONNX µs | speed-up "
    "| 100 rows: library µs | ONNX µs | speed-up |\n" + "| --- " * 7 + "|"
)


def build(kind: str) -> Any:
    if kind == "HistGradientBoosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=TREES, random_state=0)
    if kind == "LightGBM":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=TREES, verbose=-1, n_jobs=1, random_state=0)
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=TREES, max_depth=6, n_jobs=1, random_state=0)


KINDS = ("HistGradientBoosting", "LightGBM", "XGBoost")


def training_frame(rows: int = 3000) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, FEATURES)))
    frame.columns = [f"f{i}" for i in range(FEATURES)]
    weights = rng.normal(size=FEATURES)
    target = (frame.to_numpy() @ weights + rng.normal(size=rows) > 0).astype(int)
    return frame.mask(rng.random(frame.shape) < 0.1), target


def compile_pair(kind: str, root: Path) -> dict[str, Any]:
    """Register the fitted model, optimize it, and load both versions as a worker does."""
    from serving.compile.onnx import optimize
    from serving.runtime import artifacts
    from serving.runtime.prepare import prepare
    from serving.store.model_store import ModelStore

    frame, target = training_frame()
    model = build(kind).fit(frame, target)
    artifact, reference = root / f"{kind}.joblib", root / f"{kind}.csv"
    joblib.dump(model, artifact)
    frame.head(1000).to_csv(reference, index=False)
    store = ModelStore(root / "store")
    store.register(kind, artifact, reference, actor="bench")
    onnx_version, report = optimize(store, kind, 1, "bench")
    rows = np.random.default_rng(1).normal(size=(100, FEATURES)).tolist()
    loaded, inputs = {}, {}
    for label, version in (("library", 1), ("onnx", onnx_version)):
        meta = store.read_metadata(kind, version)
        loaded[label] = artifacts.load_version(store.version_dir(kind, version), meta, False)
        schema, _ = prepare(kind, version, loaded[label], meta)  # array or DataFrame, as served
        inputs[label] = {n: schema.convert(rows[:n]) for n in ROW_COUNTS}
    parity = {k: report[k] for k in ("rows", "rows_with_missing_values", "proba_max_abs_diff")}
    return {"models": loaded, "inputs": inputs, "parity": parity}


def median_us(fn: Callable[[], Any], budget_s: float) -> float:
    for _ in range(20):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 50 or time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def measure(pairs: dict[str, dict[str, Any]], rounds: int, budget_s: float) -> dict[tuple, list]:
    """(kind, runtime, rows) -> one median per round; the cells rotate from round to round."""
    cells = [(k, r, n) for k in pairs for r in ("library", "onnx") for n in ROW_COUNTS]
    timings: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for i in range(rounds):
        for kind, runtime, n in cells[i % len(cells) :] + cells[: i % len(cells)]:
            model, x = pairs[kind]["models"][runtime], pairs[kind]["inputs"][runtime][n]
            timings[(kind, runtime, n)].append(
                median_us(lambda m=model, x=x: m.predict(x), budget_s)
            )
    return timings


def table(timings: dict[tuple, list[float]]) -> list[dict[str, Any]]:
    results = []
    for kind in KINDS:
        row: dict[str, Any] = {"model": kind}
        for n in ROW_COUNTS:
            lib = statistics.median(timings[(kind, "library", n)])
            onnx = statistics.median(timings[(kind, "onnx", n)])
            row[f"library_{n}_us"], row[f"onnx_{n}_us"] = round(lib, 1), round(onnx, 1)
            row[f"speedup_{n}"] = round(lib / onnx, 1)
            for runtime in ("library", "onnx"):  # the spread: each round's median
                row[f"{runtime}_{n}_rounds_us"] = [round(t, 1) for t in timings[(kind, runtime, n)]]
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.2 s per cell")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    budget = 0.2 if args.quick else 1.0
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # one thread, as in a server worker
    warnings.filterwarnings("ignore")  # feature-name and library chatter; timing is the point
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {}
        for kind in KINDS:
            (Path(tmp) / kind).mkdir()
            pairs[kind] = compile_pair(kind, Path(tmp) / kind)
            print(f"{kind}: compiled, parity {json.dumps(pairs[kind]['parity'])}", flush=True)
        results = table(measure(pairs, rounds, budget))
    print()
    print(HEADER)
    for r in results:
        print(
            f"| {r['model']} | {r['library_1_us']} | {r['onnx_1_us']} | {r['speedup_1']} "
            f"| {r['library_100_us']} | {r['onnx_100_us']} | {r['speedup_100']} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rounds": rounds,
        "budget_s": budget,
        "features": FEATURES,
        "trees": TREES,
        "parity": {k: v["parity"] for k, v in pairs.items()},
    }
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
