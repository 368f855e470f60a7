"""A bundle's predict.py in a fresh virtualenv with only numpy and onnxruntime answers like the
server on 1,000 rows: the same labels, probabilities and values within 1e-5, as a program and as
a module; nothing of the project (scikit-learn, pandas, serving) is there to lean on."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.store.model_store import ModelStore
from tests.edge.conftest import export, rows

pytestmark = pytest.mark.slow
N_ROWS = 1000
TOLERANCE = 1e-5
MODULE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import predict
bundle = predict.load(sys.argv[1])
rows = json.load(sys.stdin)
answer = {"predictions": bundle.predict(rows)}
if bundle.task == "classifier":
    answer["probabilities"] = bundle.predict_proba(rows)
print(json.dumps(answer))
"""


def _run(python: Path, args: list[str], stdin: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(python), "-I", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_fresh_venv_has_only_numpy_and_onnxruntime(edge_python: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('sklearn', 'pandas', 'scipy', "
    probe += "'serving', 'joblib') if u.find_spec(m)])"
    assert _run(edge_python, ["-c", probe], "", edge_python.parent) == "[]\n"


@pytest.mark.parametrize("name", ["iris", "diabetes"])
def test_the_bundle_answers_like_the_server_on_1000_rows(
    edge_store: ModelStore,
    edge_python: Path,
    server_answer: Callable[..., dict[str, Any]],
    tmp_path: Path,
    name: str,
) -> None:
    bundle = tmp_path / f"{name}-bundle"
    assert export(edge_store, name, 1, bundle, "--no-web") == 0
    instances = rows(name, N_ROWS)
    classifier = name == "iris"
    server = server_answer(name, instances, proba=classifier)

    jsonl = "".join(json.dumps(row) + "\n" for row in instances)
    flags = ["--proba"] if classifier else []
    printed = _run(edge_python, [str(bundle / "predict.py"), *flags, "-"], jsonl, tmp_path)
    lines = [json.loads(line) for line in printed.splitlines()]
    assert len(lines) == N_ROWS
    module = json.loads(
        _run(edge_python, ["-c", MODULE_SCRIPT, str(bundle)], json.dumps(instances), tmp_path)
    )
    program = [line["prediction"] for line in lines]
    if classifier:
        assert program == module["predictions"] == server["predictions"]
        assert len(set(program)) == 3  # all three classes among the rows
        classes = server["classes"]
        from_program = [[line["proba"][c] for c in classes] for line in lines]
        for ours in (from_program, module["probabilities"]):
            diff = np.abs(np.asarray(ours) - np.asarray(server["probabilities"]))
            assert diff.max() <= TOLERANCE, diff.max()
    else:
        for ours in (program, module["predictions"]):
            expected = np.asarray(server["predictions"])
            assert np.allclose(ours, expected, rtol=TOLERANCE, atol=0), np.abs(
                np.asarray(ours) - expected
            ).max()
