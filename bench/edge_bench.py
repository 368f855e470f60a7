"""Edge bundles: size, cold start and per-row latency in Python and in the browser.

    .venv/bin/python -m bench.edge_bench        (make bench-edge, about a minute)

Trains iris (StandardScaler + LogisticRegression), diabetes (Ridge) and a 100-tree forest on iris
into a temp store, exports each with `serving export --edge`, and measures:
- sizes: model.onnx, the Python part (model, schema, manifest, predict.py), the whole bundle;
- Python cold start: `python -I predict.py -` scoring one row from stdin, wall time of the whole
  process (interpreter, numpy and onnxruntime imports, sha256 checks, session), median of 7;
  and `load(DIR)` alone in a process that already imported onnxruntime;
- Python per row: `Bundle.predict([row])` in a loop (median of 2,000), and rows/s of
  `predict.py` scoring 100,000 rows of JSON lines (the whole process);
- browser (headless Chromium, a fresh profile each time, loopback static server): from
  navigation to "ready" (fetch and sha256 of every file, WebAssembly compile, session), median
  of 3; per row: the page's `#bench=2000` loop (tensor, `session.run`, await), as a mean.
Python runs with this project's venv in isolated mode (-I): predict.py imports only numpy and
onnxruntime either way. Prints a table; writes bench/results/edge.json (git-ignored).
"""

from __future__ import annotations

import functools
import http.server
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from serving.edge.bundle import DEFAULT_WEB_DIR, check_web_runtime
from serving.errors import StoreError
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "edge.json"


def _models() -> dict[str, tuple[Any, np.ndarray]]:
    iris, diabetes = load_iris(as_frame=True), load_diabetes(as_frame=True)
    lr = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    forest = RandomForestClassifier(n_estimators=100, random_state=0)
    return {
        "iris LR": (lr.fit(iris.data, iris.target), iris.data.to_numpy()),
        "diabetes Ridge": (Ridge().fit(diabetes.data, diabetes.target), diabetes.data.to_numpy()),
        "iris RF 100": (forest.fit(iris.data, iris.target), iris.data.to_numpy()),
    }


def _export(store: ModelStore, name: str, model: Any, out: Path, web: bool) -> Path:
    artifact = out / f"{name}.joblib"
    joblib.dump(model, artifact)
    store.register(name, artifact, actor="bench")
    flags = [] if web else ["--no-web"]
    argv = [sys.executable, "-m", "serving", "--store", str(store.root), "export", name, "1"]
    subprocess.run([*argv, "--edge", str(out / name), *flags], check=True, capture_output=True)
    return out / name


def _sizes(bundle: Path) -> dict[str, int]:
    files = {p.relative_to(bundle).as_posix(): p.stat().st_size for p in bundle.rglob("*")}
    python = ("model.onnx", "schema.json", "manifest.json", "predict.py")
    return {
        "model_onnx": files["model.onnx"],
        "python_part": sum(files[f] for f in python),
        "whole": sum(v for p, v in files.items() if (bundle / p).is_file()),
    }


def _python(bundle: Path, data: np.ndarray) -> dict[str, float]:
    row = json.dumps(data[0].tolist()) + "\n"
    cmd = [sys.executable, "-I", str(bundle / "predict.py"), "-"]
    starts = []
    for _ in range(7):
        began = time.perf_counter()
        subprocess.run(cmd, input=row, text=True, capture_output=True, check=True)
        starts.append(time.perf_counter() - began)
    sys.path.insert(0, str(bundle))
    try:
        import onnxruntime  # noqa: F401  (imported once per process: not part of load())
        import predict  # the bundle's own file

        began = time.perf_counter()
        loaded = predict.load(bundle)
        load_s = time.perf_counter() - began
        one = [data[0].tolist()]
        times = []
        for _ in range(2000):
            began = time.perf_counter()
            loaded.predict(one)
            times.append(time.perf_counter() - began)
    finally:
        sys.path.remove(str(bundle))
        sys.modules.pop("predict", None)
    rng = np.random.default_rng(0)
    many = data[rng.integers(0, len(data), 100_000)].round(4).tolist()
    lines = "".join(json.dumps(r) + "\n" for r in many)
    began = time.perf_counter()
    subprocess.run(cmd, input=lines, text=True, capture_output=True, check=True)
    return {
        "cold_start_ms": statistics.median(starts) * 1000,
        "load_ms": load_s * 1000,
        "per_row_us": statistics.median(times) * 1e6,
        "program_rows_per_s": len(many) / (time.perf_counter() - began),
    }


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _browser(bundle: Path, profiles: Path) -> dict[str, float] | None:
    if shutil.which("chromium") is None:
        return None
    from tests.edge.chromium import Chromium

    handler = functools.partial(_Quiet, directory=str(bundle))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    ready, per_row = [], []
    try:
        for k in range(3):
            browser = Chromium(profiles / f"{bundle.name}-{k}")
            try:
                began = time.perf_counter()
                browser.call("Page.navigate", url=url + "#bench=2000")
                browser.wait_for("document.body?.dataset.readyMs", 60)
                ready.append(time.perf_counter() - began)
                per_row.append(float(browser.wait_for("document.body?.dataset.benchMsPerRow", 120)))
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return {
        "ready_ms": statistics.median(ready) * 1000,
        "per_row_us": statistics.median(per_row) * 1000,
    }


def main() -> None:
    try:
        check_web_runtime(DEFAULT_WEB_DIR)
        web = True
    except StoreError as exc:
        print(f"no browser figures: {exc}", file=sys.stderr)
        web = False
    results: dict[str, Any] = {"python": platform.python_version(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        store = ModelStore(out / "store")
        for label, (model, data) in _models().items():
            name = label.split()[0] + label.split()[-1].lower()
            bundle = _export(store, name, model, out, web)
            entry = {"sizes": _sizes(bundle), "python": _python(bundle, data)}
            entry["browser"] = _browser(bundle, out / "profiles") if web else None
            results["models"][label] = entry
            print(label, json.dumps(entry), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| model | model.onnx | Python part | whole bundle | Python cold start | load() "
        "| Python per row | predict.py rows/s | browser ready | browser per row |",
        "| --- " * 10 + "|",
    ]
    for label, e in results["models"].items():
        s, p, b = e["sizes"], e["python"], e["browser"] or {}
        nan = float("nan")
        lines.append(
            f"| {label} | {s['model_onnx'] / 1e3:.1f} kB | {s['python_part'] / 1e3:.1f} kB "
            f"| {s['whole'] / 1e6:.1f} MB | {p['cold_start_ms']:.0f} ms | {p['load_ms']:.1f} ms "
            f"| {p['per_row_us']:.0f} µs | {p['program_rows_per_s']:,.0f} "
            f"| {b.get('ready_ms', nan):.0f} ms | {b.get('per_row_us', nan):.0f} µs |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
