"""`serving demo`: the demo models, iris (classifier Pipeline) and diabetes (regressor)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from serving.store.base import StoreBase


def add_parser(verbs: Any) -> None:
    demo = verbs.add_parser("demo", help="train the demo models into an empty store")
    demo.add_argument("--force", action="store_true", help="register even if the store has models")
    demo.set_defaults(run=run)


def run(store: StoreBase, args: argparse.Namespace) -> int:
    return create_demo_models(store, force=args.force, actor=args.actor)


def create_demo_models(store: StoreBase, force: bool = False, actor: str | None = None) -> int:
    """Train and register both demo models, unless the store already holds models."""
    # scikit-learn is imported by this verb only: the other verbs start without it.
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge

    if store.list_models() and not force:
        print(f"store {store.location} already has models: {', '.join(store.list_models())}")
        return 0
    for name, loader, estimator, metric in (
        ("iris", load_iris, LogisticRegression(max_iter=1000), "accuracy"),
        ("diabetes", load_diabetes, Ridge(alpha=1.0), "r2"),
    ):
        version, score = _train_and_register(store, name, loader, estimator, actor, metric)
        print(f"{name}: version {version} ({metric} {score:.3f} on a 25% holdout)")
    return 0


def _train_and_register(
    store: StoreBase, name: str, loader: Any, estimator: Any, actor: str | None, metric: str
) -> tuple[int, float]:
    """Fit a scaled Pipeline on 75% of the dataset; register it with its holdout score."""
    import joblib
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    bunch = loader(as_frame=True)
    features, target = bunch.data, bunch.target
    if name == "iris":  # answer with species names, not class indices
        target = target.map(dict(enumerate(bunch.target_names)))
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.25, random_state=0
    )
    pipeline = Pipeline([("scale", StandardScaler()), ("model", estimator)])
    pipeline.fit(x_train, y_train)
    score = float(pipeline.score(x_test, y_test))
    with tempfile.TemporaryDirectory() as tmp:
        artifact, reference = Path(tmp) / "model.joblib", Path(tmp) / "reference.csv"
        joblib.dump(pipeline, artifact)
        x_train.to_csv(reference, index=False)
        version = store.register(
            name,
            artifact,
            reference,
            activate=True,
            actor=actor or "demo",
            extra={"metrics": {metric: round(score, 4)}},
        )
    return version, score
