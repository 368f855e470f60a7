"""The model zoo (issue 18): sixteen kinds of models people train, registered by the CLI, served
by one real gunicorn server on /v1, /v2 and /invocations and scored by `serving batch`, every
answer compared with the model's own `predict` on the same rows.

Each kind is trained here on one of scikit-learn's own datasets and registered as the README
says (`models register NAME ARTIFACT --reference-data train.csv` when it was fitted on a
DataFrame). They are all versions of one model, `zoo`: /invocations scores the production alias
of SERVING_DEFAULT_MODEL only, so a test promotes its kind's version (admin API), waits until
the worker serves it, and then asks every front door. Labels must come back exactly (integer
labels as JSON integers, V2 datatype INT64, integer CSV columns), numbers to 1e-9.

One parametrized case per kind and front door (`<kind>-<door>`), so the table of what works is
the test report; a cell that does not work yet is a strict xfail naming why.
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from tests.e2e.conftest import (
    GunicornServer,
    Reply,
    http_request,
    reap,
    server_env,
    start_cli,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "zoo"
TOKEN = "zoo-admin-token"
ROWS = 6  # rows asked per front door
PARALLEL = 2  # CLI processes at a time (the machine has 2 cores)


@dataclass(frozen=True)
class Trained:
    """A fitted model, the frame (or array) it was fitted on, and the rows the test sends."""

    model: Any
    train: pd.DataFrame | np.ndarray
    rows: pd.DataFrame | np.ndarray

    @property
    def named(self) -> bool:
        return isinstance(self.train, pd.DataFrame)

    def columns(self) -> list[str]:
        """The training frame's column names; x0, x1, ... for an array (taken by position)."""
        if isinstance(self.train, pd.DataFrame):
            return [str(c) for c in self.train.columns]
        return [f"x{i}" for i in range(self.train.shape[1])]

    def frame(self) -> pd.DataFrame:
        """The rows as a user's CSV holds them."""
        if isinstance(self.rows, pd.DataFrame):
            return self.rows
        return pd.DataFrame(self.rows, columns=self.columns())

    def want(self) -> np.ndarray:
        return np.asarray(self.model.predict(self.rows))


# -- the kinds, each trained on a scikit-learn dataset -----------------------------------------


def _split(x: pd.DataFrame | np.ndarray, model: Any, y: Any) -> Trained:
    """Fit on all but the last ROWS rows; send those."""
    head = x.iloc[:-ROWS] if isinstance(x, pd.DataFrame) else x[:-ROWS]
    tail = x.iloc[-ROWS:] if isinstance(x, pd.DataFrame) else x[-ROWS:]
    if y is None:
        return Trained(model.fit(head), head, tail.copy())
    target = y.iloc[:-ROWS] if isinstance(y, pd.Series | pd.DataFrame) else y[:-ROWS]
    return Trained(model.fit(head, target), head, tail.copy())


def _shuffled(bunch: Any) -> tuple[pd.DataFrame, pd.Series]:
    order = np.random.default_rng(0).permutation(len(bunch.frame))
    return bunch.data.iloc[order].reset_index(drop=True), bunch.target.iloc[order].reset_index(
        drop=True
    )


def hgb_missing() -> Trained:
    """HistGradientBoostingClassifier, 300 features, NaN in training and in the rows sent."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = make_classification(400, 300, n_informative=12, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i:03d}" for i in range(300)])
    frame = frame.mask(np.random.default_rng(0).random(frame.shape) < 0.05)
    trained = _split(frame, HistGradientBoostingClassifier(max_iter=15, random_state=0), y)
    trained.rows.iloc[0, :5] = np.nan
    trained.rows.iloc[1, -1] = np.nan
    return trained


def imputer_pipeline() -> Trained:
    """ColumnTransformer(SimpleImputer + StandardScaler, OneHotEncoder) + LogisticRegression on
    diabetes with `sex` as strings; a null bmi and s5 sent."""
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _shuffled(load_diabetes(as_frame=True))
    x["sex"] = np.where(x["sex"] > 0, "male", "female")
    numbers = [c for c in x.columns if c != "sex"]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex"]),
        ]
    )
    labels = np.where(y > y.median(), "high", "low")
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))])
    trained = _split(x, model, labels)
    trained.rows.loc[trained.rows.index[0], "bmi"] = np.nan
    trained.rows.loc[trained.rows.index[1], ["bp", "s5"]] = np.nan
    return trained


def bool_forest() -> Trained:
    """RandomForestClassifier on boolean columns (breast cancer features above their median)
    beside one numeric column."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = _shuffled(load_breast_cancer(as_frame=True))
    flags = (x.iloc[:, :6] > x.iloc[:, :6].median()).rename(columns=lambda c: f"high {c}")
    frame = pd.concat([flags, x[["worst area"]]], axis=1)
    return _split(frame, RandomForestClassifier(n_estimators=15, random_state=0), y)


def lightgbm_spaces() -> Trained:
    """LGBMClassifier on the breast cancer DataFrame: spaces in every column name."""
    from lightgbm import LGBMClassifier
    from sklearn.datasets import load_breast_cancer

    x, y = _shuffled(load_breast_cancer(as_frame=True))
    model = LGBMClassifier(n_estimators=15, num_leaves=8, n_jobs=1, verbose=-1, random_state=0)
    return _split(x, model, y)


def xgboost_wine() -> Trained:
    """XGBClassifier on wine (three integer classes; a "/" in a column name)."""
    from sklearn.datasets import load_wine
    from xgboost import XGBClassifier

    x, y = _shuffled(load_wine(as_frame=True))
    model = XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1, random_state=0)
    return _split(x, model, y)


def _multilabel() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(120, n_features=6, n_classes=3, random_state=0)
    return pd.DataFrame(x, columns=[f"count_{i}" for i in range(6)]), y


def multilabel_forest() -> Trained:
    """RandomForestClassifier on a 2-D 0/1 indicator y (three labels)."""
    from sklearn.ensemble import RandomForestClassifier

    x, y = _multilabel()
    return _split(x, RandomForestClassifier(n_estimators=10, random_state=0), y)


def ovr_multilabel() -> Trained:
    """OneVsRestClassifier(LogisticRegression) on the same indicator y."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, y = _multilabel()
    return _split(x, OneVsRestClassifier(LogisticRegression(max_iter=1000)), y)


def multi_output_ridge() -> Trained:
    """Ridge on linnerud: three exercises in, three body measurements out (2-D y)."""
    from sklearn.datasets import load_linnerud
    from sklearn.linear_model import Ridge

    bunch = load_linnerud(as_frame=True)
    return _split(bunch.data, Ridge(), bunch.target)


def _iris() -> tuple[pd.DataFrame, pd.Series]:
    from sklearn.datasets import load_iris

    return _shuffled(load_iris(as_frame=True))


def isolation_forest() -> Trained:
    from sklearn.ensemble import IsolationForest

    x, _ = _iris()
    return _split(x, IsolationForest(n_estimators=20, random_state=0), None)


def kmeans() -> Trained:
    from sklearn.cluster import KMeans

    x, _ = _iris()
    return _split(x, KMeans(n_clusters=3, n_init=2, random_state=0), None)


def log_target_regressor() -> Trained:
    """TransformedTargetRegressor(Ridge, log/exp) on diabetes."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    x, y = _shuffled(load_diabetes(as_frame=True))
    model = TransformedTargetRegressor(Ridge(alpha=0.1), func=np.log, inverse_func=np.exp)
    return _split(x, model, y)


def calibrated_svc() -> Trained:
    """StandardScaler + CalibratedClassifierCV(LinearSVC) on breast cancer (integer classes)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = _shuffled(load_breast_cancer(as_frame=True))
    model = make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(), cv=3))
    return _split(x, model, y)


def stacking() -> Trained:
    """StackingClassifier(forest, scaled logistic regression) on iris, string labels."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier, StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _iris()
    names = pd.Series(load_iris().target_names[y])
    base = [
        ("forest", RandomForestClassifier(n_estimators=10, random_state=0)),
        ("linear", make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))),
    ]
    model = StackingClassifier(base, final_estimator=LogisticRegression(max_iter=500), cv=3)
    return _split(x, model, names)


def integer_codes() -> Trained:
    """Digits as int64 pixel columns (integer-coded features), labels the integers 0-9."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _shuffled(load_digits(as_frame=True))
    x, y = x.iloc[:400].astype("int64"), y.iloc[:400]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return _split(x, model, y)


def string_labels() -> Trained:
    """StandardScaler + KNeighborsClassifier on wine, labels "class_0" ... "class_2"."""
    from sklearn.datasets import load_wine
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _shuffled(load_wine(as_frame=True))
    names = pd.Series(load_wine().target_names[y])
    return _split(x, make_pipeline(StandardScaler(), KNeighborsClassifier()), names)


def svc_array() -> Trained:
    """SVC fitted on a bare numpy array (no feature names), iris, integer classes."""
    from sklearn.datasets import load_iris
    from sklearn.svm import SVC

    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return _split(x[order], SVC(), y[order])


KINDS: dict[str, Callable[[], Trained]] = {
    "hgb_missing": hgb_missing,
    "imputer_pipeline": imputer_pipeline,
    "bool_forest": bool_forest,
    "lightgbm_spaces": lightgbm_spaces,
    "xgboost": xgboost_wine,
    "multilabel_forest": multilabel_forest,
    "ovr_multilabel": ovr_multilabel,
    "multi_output_ridge": multi_output_ridge,
    "isolation_forest": isolation_forest,
    "kmeans": kmeans,
    "log_target": log_target_regressor,
    "calibrated": calibrated_svc,
    "stacking": stacking,
    "integer_labels": integer_codes,
    "string_labels": string_labels,
    "svc": svc_array,
}
DOORS = ("v1", "v2", "invocations", "batch")
# Cells that do not work yet: (kind, door) -> why.
XFAIL: dict[tuple[str, str], str] = {}


def _cases() -> list[Any]:
    cases = []
    for kind in KINDS:
        for door in DOORS:
            why = XFAIL.get((kind, door))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            cases.append(pytest.param(kind, door, marks=marks, id=f"{kind}-{door}"))
    return cases


# -- the zoo: trained, registered, served ------------------------------------------------------


@dataclass
class Zoo:
    server: GunicornServer
    trained: dict[str, Trained]
    versions: dict[str, int]
    batches: dict[str, tuple[int, str, Path]]  # kind -> exit code, stderr, output file

    def serve(self, kind: str) -> None:
        """Point production at the kind's version and wait until the worker answers with it."""
        version = self.versions[kind]
        reply = http_request(
            self.server.port,
            "POST",
            f"/v1/admin/models/{NAME}/promote",
            {"version": version},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert reply.status == 200, reply.body

        def served() -> bool:
            reply = http_request(self.server.port, "GET", f"/v1/models/{NAME}")
            return reply.status == 200 and reply.body["serving"].get("production") == version

        wait_until(served, 15, f"{NAME} {version} ({kind}) to serve", step=0.05)


def _run_all(store: Path, commands: list[list[str]]) -> list[tuple[int, str, str]]:
    """Run CLI commands PARALLEL at a time; (exit code, stdout, stderr) of each, in order."""
    results: list[tuple[int, str, str]] = [(-1, "", "")] * len(commands)
    running: list[tuple[int, Any]] = []
    pending = list(enumerate(commands))
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                index, args = pending.pop(0)
                running.append((index, start_cli(store, *args)))
            index, proc = running.pop(0)
            stdout, stderr = proc.communicate(timeout=120)
            results[index] = (proc.returncode, stdout, stderr)
    finally:
        for _, proc in running:
            reap(proc)
    return results


@pytest.fixture(scope="module")
def zoo(
    tmp_path_factory: pytest.TempPathFactory, start_server: Callable[..., GunicornServer]
) -> Iterator[Zoo]:
    work = tmp_path_factory.mktemp("zoo")
    store = work / "store"
    with threadpool_limits(limits=1):  # OpenMP threads on 2 busy cores: HGB 4 s instead of 1
        trained = {kind: build() for kind, build in KINDS.items()}
    commands = []
    for kind, model in trained.items():
        artifact = work / f"{kind}.joblib"
        joblib.dump(model.model, artifact)
        args = ["models", "register", NAME, str(artifact)]
        if model.named:
            model.train.to_csv(work / f"{kind}.train.csv", index=False)
            args += ["--reference-data", str(work / f"{kind}.train.csv")]
        commands.append(args)
    # The last (a small SVC) registers alone, creating the model and serving at start; then
    # the others two at a time.
    kinds = list(trained)
    results = dict(zip(kinds[-1:], _run_all(store, [[*commands[-1], "--activate"]])))
    results |= dict(zip(kinds[:-1], _run_all(store, commands[:-1])))
    versions = {}
    for kind, (code, stdout, stderr) in results.items():
        assert code == 0, f"register {kind}: exit {code}\n{stdout}\n{stderr}"
        versions[kind] = int(stdout.strip())
    batches = _batch_all(store, work, trained, versions)
    extra = {"SERVING_DEFAULT_MODEL": NAME, "SERVING_ADMIN_TOKEN": TOKEN}
    server = start_server(server_env(store, statsd_port=9, workers=1, extra=extra))
    yield Zoo(server, trained, versions, batches)
    server.stop()


def _batch_all(
    store: Path, work: Path, trained: dict[str, Trained], versions: dict[str, int]
) -> dict[str, tuple[int, str, Path]]:
    """`serving batch zoo ROWS.csv --version V -o OUT.csv` for every kind (before the server
    starts, so they do not compete with it for the cores)."""
    commands, outputs = [], {}
    for kind, model in trained.items():
        source, outputs[kind] = work / f"{kind}.rows.csv", work / f"{kind}.scored.csv"
        model.frame().to_csv(source, index=False)
        commands.append(
            ["batch", NAME, str(source), "-o", str(outputs[kind]), "--version", str(versions[kind])]
        )
    results = _run_all(store, commands)
    return {
        kind: (code, stderr, outputs[kind]) for kind, (code, _, stderr) in zip(trained, results)
    }


# -- sending rows and comparing answers --------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON value: numpy scalars as Python ones, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def json_rows(trained: Trained) -> list[list[Any]]:
    rows = trained.rows
    values = rows.astype(object).to_numpy() if isinstance(rows, pd.DataFrame) else rows
    return [[_plain(v) for v in row] for row in values.tolist()]


def same(kind: str, answer: Any, want: np.ndarray) -> None:
    """The model's own predict: labels exactly (integers as integers), numbers to 1e-9."""
    got = np.asarray(answer, dtype=object)
    assert got.shape == want.shape, f"{kind}: shape {got.shape}, want {want.shape}: {answer}"
    if want.dtype.kind in "iub":
        assert all(type(v) is int for v in got.ravel()), f"{kind}: not integers: {answer}"
        assert got.tolist() == want.tolist(), kind
    elif want.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(float), want, rtol=1e-9, atol=1e-12, err_msg=kind)
    else:
        assert got.tolist() == want.tolist(), kind


def v2_datatype(want: np.ndarray) -> str:
    return {"i": "INT64", "u": "INT64", "b": "BOOL", "f": "FP64"}.get(want.dtype.kind, "BYTES")


def ask_v1(zoo: Zoo, kind: str) -> list[Any]:
    """/v1 with rows in the model's order and, for a named model, objects keyed by name."""
    trained, answers = zoo.trained[kind], []
    rows = json_rows(trained)
    bodies = [rows]
    if trained.named:
        bodies.append([dict(zip(trained.columns(), row)) for row in rows])
    for instances in bodies:
        reply = http_request(
            zoo.server.port, "POST", f"/v1/models/{NAME}/predict", {"instances": instances}
        )
        assert reply.status == 200, reply.body
        assert reply.body["version"] == zoo.versions[kind]
        answers.append(reply.body["predictions"])
    return answers


def ask_v2(zoo: Zoo, kind: str) -> list[Any]:
    """The inputs `GET /v2/models/zoo` describes (one [N, n] tensor, or one per feature for a
    model with string features), then /infer; the predict output, reshaped."""
    port, rows = zoo.server.port, json_rows(zoo.trained[kind])
    # An FP64 tensor holds numbers: a boolean feature is 1.0/0.0 there, as the model takes it.
    rows = [[float(v) if type(v) is bool else v for v in row] for row in rows]
    metadata = http_request(port, "GET", f"/v2/models/{NAME}").body
    if len(metadata["inputs"]) == 1:
        [spec] = metadata["inputs"]
        assert spec["shape"] == [-1, len(rows[0])], metadata
        shape = [len(rows), len(rows[0])]
        inputs = [{"name": spec["name"], "datatype": spec["datatype"], "shape": shape}]
        inputs[0]["data"] = rows
    else:
        inputs = _feature_tensors(zoo.trained[kind], rows, metadata["inputs"])
    body = {"inputs": inputs, "outputs": [{"name": "predict"}]}
    reply = http_request(port, "POST", f"/v2/models/{NAME}/infer", body)
    assert reply.status == 200, reply.body
    [output] = reply.body["outputs"]
    want = zoo.trained[kind].want()
    advertised = {o["name"]: o for o in metadata["outputs"]}["predict"]
    assert output["datatype"] == advertised["datatype"] == v2_datatype(want), (metadata, output)
    assert output["shape"] == list(want.shape)
    assert advertised["shape"] == [-1, *want.shape[1:]], metadata
    return [np.asarray(output["data"], dtype=object).reshape(want.shape).tolist()]


def _feature_tensors(
    trained: Trained, rows: list[list[Any]], specs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One [N, 1] tensor per feature, as the metadata lists them (named by the columns)."""
    assert [spec["name"] for spec in specs] == trained.columns(), specs
    tensors = []
    for j, spec in enumerate(specs):
        assert spec["shape"] == [-1, 1], spec
        column = [[row[j]] for row in rows]
        tensor = {"name": spec["name"], "datatype": spec["datatype"], "shape": [len(rows), 1]}
        tensors.append({**tensor, "data": column})
    return tensors


def ask_invocations(zoo: Zoo, kind: str) -> list[Any]:
    """/invocations with `dataframe_split` JSON and with CSV."""
    trained, port = zoo.trained[kind], zoo.server.port
    split = {"columns": trained.columns(), "data": json_rows(trained)}
    csv = trained.frame().to_csv(index=False).encode()
    answers = []
    for body, headers in (
        (json.dumps({"dataframe_split": split}).encode(), {"Content-Type": "application/json"}),
        (csv, {"Content-Type": "text/csv"}),
    ):
        reply = _post_raw(port, "/invocations", body, headers)
        assert reply.status == 200, reply.body
        answers.append(reply.body["predictions"])
    return answers


def _post_raw(port: int, path: str, body: bytes, headers: dict[str, str]) -> Reply:
    """A POST of bytes as they are (http_request sends JSON only)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return Reply(response.status, dict(response.getheaders()), parsed, raw)


def batch_answer(zoo: Zoo, kind: str) -> list[Any]:
    """The prediction column(s) of the batch output, with the types the CSV holds."""
    code, stderr, output = zoo.batches[kind]
    assert code == 0, f"serving batch exited {code}: {stderr}"
    scored = pd.read_csv(io.StringIO(output.read_text()))
    want = zoo.trained[kind].want()
    assert len(scored) == len(want), scored
    if want.ndim == 1:
        return [[_plain(v) for v in scored["prediction"].tolist()]]
    columns = [f"prediction_{i}" for i in range(want.shape[1])]
    assert [c for c in scored.columns if c.startswith("prediction")] == columns, scored.columns
    return [[[_plain(v) for v in row] for row in scored[columns].to_numpy().tolist()]]


ASK = {"v1": ask_v1, "v2": ask_v2, "invocations": ask_invocations, "batch": batch_answer}


@pytest.mark.parametrize(("kind", "door"), _cases())
def test_every_kind_answers_like_its_own_predict_on_every_front_door(
    zoo: Zoo, kind: str, door: str
) -> None:
    if door != "batch":
        zoo.serve(kind)
    want = zoo.trained[kind].want()
    for answer in ASK[door](zoo, kind):
        same(kind, answer, want)
