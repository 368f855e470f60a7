"""The benchmark's models and request bodies, registered in a temp store with the real CLI.

`lr`: StandardScaler + LogisticRegression in a Pipeline fitted on a DataFrame (20 named
numeric features). `rf`: a 100-tree RandomForestClassifier on the same 20 features.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import protocols

N_FEATURES = 20
MODELS = ("lr", "rf")
ROW_COUNTS = (1, 100)


def training_data() -> tuple[Any, Any]:
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2000, n_features=N_FEATURES, n_informative=10, random_state=0
    )
    return pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(N_FEATURES)]), y


def train(frame: Any, y: Any) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "lr": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, y),
        "rf": RandomForestClassifier(n_estimators=100, random_state=0).fit(frame, y),
    }


def build(workdir: Path, env: dict[str, str]) -> tuple[Path, dict[tuple[str, int], Path]]:
    """Train, register both models (activated) in `workdir/store`; write the request bodies,
    {(protocol name, rows): file}, the same rows in every contestant's protocol."""
    import joblib

    frame, y = training_data()
    store = workdir / "store"
    reference = workdir / "reference.csv"  # with it, the drift monitor bins every request
    frame.to_csv(reference, index=False)
    for name, model in train(frame, y).items():
        artifact = workdir / f"{name}.joblib"
        joblib.dump(model, artifact)
        register(store, name, artifact, env, reference)
    rows = {count: frame.head(count).values.tolist() for count in ROW_COUNTS}
    return store, protocols.write_bodies(workdir, rows, list(frame.columns))


def register(
    store: Path, name: str, artifact: Path, env: dict[str, str], reference: Path | None = None
) -> None:
    argv = [sys.executable, "-m", "serving", "--store", str(store)]
    argv += ["models", "register", name, str(artifact), "--activate"]
    argv += ["--reference-data", str(reference)] if reference else []
    done = subprocess.run(
        argv, cwd=store.parent, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"registering {name} failed:\n{done.stdout}{done.stderr}")
