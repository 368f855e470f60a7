"""A real gunicorn server with SERVING_ALLOW_PICKLE=false: a skops version serves, a joblib
version promoted over it is refused by every worker (the skops one keeps serving), and a model
with only a joblib version makes /health/ready 503 with the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    predict,
    run_cli,
    server_env,
    wait_until,
)

pytestmark = pytest.mark.e2e

TREE = "sklearn.tree._tree.Tree"
REFUSED = "pickle refused: SERVING_ALLOW_PICKLE=false"
NO_PICKLE = {"SERVING_ALLOW_PICKLE": "false"}


@pytest.fixture(scope="module")
def forest_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small forest saved as model.skops and as model.joblib."""
    import joblib
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    bunch = load_iris(as_frame=True)
    target = bunch.target.map(dict(enumerate(bunch.target_names)))
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(bunch.data, target)
    folder = tmp_path_factory.mktemp("forest")
    skops.io.dump(model, folder / "forest.skops")
    joblib.dump(model, folder / "forest.joblib")
    return folder / "forest.skops", folder / "forest.joblib"


def _problems(port: int, name: str) -> dict[str, str]:
    return http_request(port, "GET", f"/v1/models/{name}").body["problems"]


def test_a_skops_version_serves_with_pickle_refused(
    tmp_path: Path,
    forest_files: tuple[Path, Path],
    start_server: Callable[..., GunicornServer],
) -> None:
    skops_file, joblib_file = forest_files
    store = tmp_path / "store"
    register = ("models", "register", "forest", str(skops_file), "--trusted-types", TREE)
    assert run_cli(store, *register, "--activate", env=NO_PICKLE).strip() == "1"
    env = server_env(
        store, statsd_port=9, workers=2, extra={**NO_PICKLE, "SERVING_STATSD_HOST": ""}
    )
    server = start_server(env)
    reply = predict(server.port, [IRIS_ROW], name="forest")
    assert reply.status == 200 and reply.body["predictions"] == ["setosa"]

    # The operator's own machine may unpickle; the server must not.
    assert run_cli(store, "models", "register", "forest", str(joblib_file)).strip() == "2"
    run_cli(store, "models", "promote", "forest", "2")
    wait_until(
        lambda: REFUSED in _problems(server.port, "forest").get("production", ""), 5, "refusal"
    )
    for _ in range(4):  # both workers: still the skops version
        assert predict(server.port, [IRIS_ROW], name="forest").headers["x-model-version"] == "1"

    assert run_cli(store, "models", "register", "legacy", str(joblib_file), "--activate") == "1\n"
    ready = wait_until(
        lambda: (r := http_request(server.port, "GET", "/health/ready")).status == 503 and r,
        5,
        "readiness 503",
    )
    assert REFUSED in ready.body["waiting"]["legacy:production"]
