"""`serving batch` on real files with real artifacts: end to end as a real subprocess, option
semantics through `main()` in this process.

Formats in and out, pipes, bad rows and their reasons, bisection of rows the model refuses,
probabilities, ids, pinned versions and aliases, worker processes, interrupts and write
failures, the reject-rate gate, progress output on a pty and off it, parity with the REST API,
and memory that stays flat however large the file.
"""

from __future__ import annotations

import io
import os
import pty
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from flask import Flask
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from serving.batch.scoring import predict_isolating
from serving.cli.main import main
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
IRIS_NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def batch_command(store: ModelStore, *args: str) -> list[str]:
    return [sys.executable, "-m", "serving", "--store", str(store.root), "batch", *args]


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_batch(
    store: ModelStore,
    *args: str,
    cwd: Path,
    stdin: bytes | None = None,
    limit_bytes: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    def limit() -> None:  # a real write failure: the kernel refuses to grow files past the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        batch_command(store, *args),
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env=child_env(),
        preexec_fn=limit if limit_bytes is not None else None,
    )


Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The same command in this process (for option semantics): returns (exit code, stderr)."""
    monkeypatch.chdir(work)

    def run(store: ModelStore, *args: str) -> tuple[int, str]:
        try:
            code = main(["--store", str(store.root), "batch", *args])
        except SystemExit as exc:  # argparse refusing the options
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    return run


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in frame.to_dict("records")))
    return path


def read_output(data: bytes | Path, fmt: str) -> pd.DataFrame:
    raw = data.read_bytes() if isinstance(data, Path) else data
    if fmt == "csv":
        return pd.read_csv(io.BytesIO(raw), dtype={"customer": str})
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(raw)).to_pandas()
    return pd.DataFrame([orjson.loads(line) for line in raw.splitlines()])


def read_rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def stderr_text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The current directory of the runs: only inputs and what the command writes."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def iris_frame() -> pd.DataFrame:
    frame = load_iris(as_frame=True).data
    return frame.assign(customer=[f"{i:03d}" for i in range(len(frame))])


@pytest.fixture
def iris_store(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> ModelStore:
    """iris v1 as production, v2 as staging."""
    store.register("iris", iris_artifact, activate=True, actor="test")
    store.register("iris", iris_artifact_v2, actor="test")
    store.promote("iris", 2, "staging", actor="test")
    return store


def expected_labels(artifact: Path, frame: pd.DataFrame) -> list[Any]:
    return list(joblib.load(artifact).predict(frame[IRIS_NAMES]))


# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [("csv", "csv"), ("jsonl", "jsonl"), ("parquet", "parquet"), ("csv", "parquet")],
    ids=["csv", "jsonl", "parquet", "csv-to-parquet"],
)
def test_each_format_in_and_out(
    iris_store: ModelStore,
    iris_artifact: Path,
    iris_frame: pd.DataFrame,
    work: Path,
    source: str,
    target: str,
) -> None:
    data = write_frame(iris_frame, work / f"in.{source}")
    out = work / f"out.{target}"
    result = run_batch(iris_store, "iris", str(data), "-o", str(out), cwd=work)
    assert result.returncode == 0, stderr_text(result)
    scored = read_output(out, target)
    assert list(scored.columns) == ["row", "prediction", "model", "version"]
    assert scored["row"].tolist() == list(range(150))
    assert scored["prediction"].tolist() == expected_labels(iris_artifact, iris_frame)
    assert set(scored["model"]) == {"iris"} and set(scored["version"]) == {1}
    assert (work / f"out.{target}.rejects.jsonl").read_bytes() == b""
    summary = stderr_text(result).strip().splitlines()[-1]
    assert "150 rows read, 150 written, 0 rejected" in summary and "rows/s" in summary


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_stdin_to_stdout_pipe_keeps_the_input_format(
    iris_store: ModelStore, iris_artifact: Path, iris_frame: pd.DataFrame, work: Path, fmt: str
) -> None:
    data = write_frame(iris_frame, work / f"in.{fmt}").read_bytes()
    result = run_batch(iris_store, "iris", "-", cwd=work, stdin=data)
    assert result.returncode == 0, stderr_text(result)
    scored = read_output(result.stdout, fmt)
    assert scored["prediction"].tolist() == expected_labels(iris_artifact, iris_frame)
    # Output on stdout: the rejects file goes to the current directory, named after the model.
    assert (work / "iris.rejects.jsonl").read_bytes() == b""


def test_format_option_chooses_the_output_format(
    iris_store: ModelStore, iris_frame: pd.DataFrame, work: Path
) -> None:
    data = write_frame(iris_frame, work / "in.csv")
    rejects = work / "r.jsonl"
    args = ("iris", str(data), "--format", "jsonl", "--rejects", str(rejects))
    result = run_batch(iris_store, *args, cwd=work)
    assert result.returncode == 0, stderr_text(result)
    assert len(read_output(result.stdout, "jsonl")) == 150 and rejects.exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_empty_input_gives_an_empty_but_valid_output(
    iris_store: ModelStore, iris_frame: pd.DataFrame, work: Path, cli: Cli, fmt: str
) -> None:
    data = write_frame(iris_frame.head(0), work / f"in.{fmt}")
    out = work / f"out.{fmt}"
    code, stderr = cli(iris_store, "iris", str(data), "-o", str(out))
    assert code == 0, stderr
    assert list(read_output(out, fmt).columns) == ["row", "prediction", "model", "version"]


def test_model_without_feature_names_reads_columns_in_order(
    store: ModelStore, unnamed_artifact: Path, iris_frame: pd.DataFrame, work: Path, cli: Cli
) -> None:
    store.register("plain", unnamed_artifact, activate=True, actor="test")
    data = write_frame(iris_frame, work / "in.csv")
    out = work / "out.csv"
    code, stderr = cli(store, "plain", str(data), "-o", str(out), "--id-column", "customer")
    assert code == 0, stderr
    expected = joblib.load(unnamed_artifact).predict(iris_frame[IRIS_NAMES].to_numpy())
    assert read_output(out, "csv")["prediction"].tolist() == expected.tolist()


# -- bad rows ---------------------------------------------------------------------------------

BAD_CSV = """sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)
5.1,3.5,1.4,0.2
abc,3.5,1.4,0.2
,3.5,1.4,0.2
5.1,inf,1.4,0.2
6.1,2.5,4.4,1.2
5.1,3.5,1.4,-Infinity
True,3.5,1.4,0.2
"""
BAD_CSV_REJECTS = {
    1: ("wrong_type", "sepal length (cm)", "got a string ('abc')"),
    2: ("missing_value", "sepal length (cm)", "missing value"),
    3: ("not_finite", "sepal width (cm)", "got Infinity"),
    5: ("not_finite", "petal width (cm)", "got -Infinity"),
    6: ("wrong_type", "sepal length (cm)", "got a string ('True')"),
}

_ROW = '"sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2'
BAD_JSONL = "\n".join(
    [
        '{"sepal length (cm)": 5.1, ' + _ROW + "}",
        '{"sepal length (cm)": "5.1", ' + _ROW + "}",
        "{" + _ROW + "}",
        '{"sepal length (cm)": null, ' + _ROW + "}",
        '{"sepal length (cm)": true, ' + _ROW + "}",
        '{"sepal length (cm)": NaN, ' + _ROW + "}",
        "{not json",
        "[6.1, 2.5, 4.4, 1.2]",
        "[6.1, 2.5]",
        "42",
        '{"sepal length (cm)": 1e999, ' + _ROW + "}",
    ]
)
BAD_JSONL_REJECTS = {
    1: ("wrong_type", "sepal length (cm)", "got a string ('5.1')"),
    2: ("missing_feature", "sepal length (cm)", "is missing"),
    3: ("missing_value", "sepal length (cm)", "got null"),
    4: ("wrong_type", "sepal length (cm)", "got a boolean (true)"),
    5: ("not_finite", "sepal length (cm)", "got NaN"),
    6: ("malformed_row", None, "not valid JSON"),
    8: ("malformed_row", None, "expected a list of 4 values, got 2"),
    9: ("malformed_row", None, "expected a JSON object"),
    10: ("not_finite", "sepal length (cm)", "got Infinity"),
}


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [("csv", BAD_CSV, BAD_CSV_REJECTS), ("jsonl", BAD_JSONL, BAD_JSONL_REJECTS)],
    ids=["csv", "jsonl"],
)
def test_bad_rows_are_rejected_alone_with_their_reason(
    iris_store: ModelStore,
    work: Path,
    fmt: str,
    text: str,
    expected: dict[int, tuple[str, str | None, str]],
) -> None:
    data = work / f"in.{fmt}"
    data.write_text(text)
    out = work / f"out.{fmt}"
    args = ("iris", str(data), "-o", str(out), "--max-reject-rate", "1")
    result = run_batch(iris_store, *args, cwd=work)
    assert result.returncode == 0, stderr_text(result)
    rejects = read_rejects(work / f"out.{fmt}.rejects.jsonl")
    assert {r["row"]: (r["reason"], r["feature"]) for r in rejects} == {
        row: (reason, feature) for row, (reason, feature, _) in expected.items()
    }
    for reject in rejects:
        assert expected[reject["row"]][2] in reject["message"]
    written = read_output(out, fmt)["row"].tolist()
    total = len(text.strip().splitlines()) - (fmt == "csv")
    assert sorted(written + [r["row"] for r in rejects]) == list(range(total))
    assert f"{total} rows read, {len(written)} written, {len(rejects)} rejected" in stderr_text(
        result
    )


def test_rows_the_model_refuses_are_found_by_bisection(
    store: ModelStore, mixed_artifact: tuple[Path, Path], work: Path
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    frame = pd.concat([pd.read_csv(reference)] * 5, ignore_index=True)
    frame = frame.astype({"city": object, "income": object})
    frame.loc[[3, 400, 401, 999], "city"] = "marseille"  # a category the encoder never saw
    frame.loc[10, "income"] = "lots"  # wrong type for a number
    frame.loc[20, "plan"] = None  # missing categorical value
    frame.loc[30, "city"] = 75  # a number where a string is expected
    data = write_frame(frame, work / "in.jsonl")
    out = work / "out.csv"
    args = ("churn", str(data), "-o", str(out), "--chunk-size", "128", "--max-reject-rate", "1")
    result = run_batch(store, *args, cwd=work)
    assert result.returncode == 0, stderr_text(result)
    rejects = {r["row"]: r for r in read_rejects(work / "out.csv.rejects.jsonl")}
    assert {row: r["reason"] for row, r in rejects.items()} == {
        3: "unknown_category",
        10: "wrong_type",
        20: "missing_value",
        30: "wrong_type",
        400: "unknown_category",
        401: "unknown_category",
        999: "unknown_category",
    }
    assert "marseille" in rejects[3]["message"]
    assert "expected a string (categorical feature), got a number" in rejects[30]["message"]
    scored = read_output(out, "csv")
    good = frame.drop(index=list(rejects))
    good = good.astype({"income": float})
    assert scored["row"].tolist() == good.index.tolist()
    assert scored["prediction"].tolist() == list(joblib.load(artifact).predict(good))


def test_predict_isolating_keeps_order_and_names_each_refused_row() -> None:
    bad = {3, 4, 17}

    def predict(rows: np.ndarray) -> tuple[np.ndarray, None]:
        if bad & set(rows.tolist()):
            raise ValueError(f"Found unknown categories in {sorted(bad & set(rows.tolist()))}")
        return rows * 10, None

    predictions, _, failed = predict_isolating(predict, np.arange(20), 20)
    assert predictions.tolist() == [i * 10 for i in range(20) if i not in bad]
    assert sorted(failed) == sorted(bad)
    assert {reason for reason, _, _ in failed.values()} == {"unknown_category"}


# -- options ----------------------------------------------------------------------------------


def test_proba_adds_one_column_per_class(
    iris_store: ModelStore, iris_artifact: Path, iris_frame: pd.DataFrame, work: Path
) -> None:
    data = write_frame(iris_frame, work / "in.parquet")
    out = work / "out.parquet"
    result = run_batch(iris_store, "iris", str(data), "-o", str(out), "--proba", cwd=work)
    assert result.returncode == 0, stderr_text(result)
    scored = read_output(out, "parquet")
    columns = ["proba_setosa", "proba_versicolor", "proba_virginica"]
    assert list(scored.columns) == ["row", "prediction", *columns, "model", "version"]
    expected = joblib.load(iris_artifact).predict_proba(iris_frame[IRIS_NAMES])
    np.testing.assert_array_equal(scored[columns].to_numpy(), expected)


def test_proba_on_a_regressor_is_a_one_line_error(
    served: ModelStore, iris_frame: pd.DataFrame, work: Path, cli: Cli
) -> None:
    data = write_frame(iris_frame, work / "in.csv")
    code, stderr = cli(served, "diabetes", str(data), "-o", str(work / "out.csv"), "--proba")
    assert code == 1
    assert stderr.strip() == (
        "error: --proba needs a classifier with predict_proba; diabetes v1 is a regressor"
    )
    assert sorted(os.listdir(work)) == ["in.csv"]


def test_id_column_is_copied_to_the_output_and_the_rejects(
    iris_store: ModelStore, iris_frame: pd.DataFrame, work: Path
) -> None:
    frame = iris_frame.astype({"petal width (cm)": object})
    frame.loc[7, "petal width (cm)"] = "n/a?"
    data = write_frame(frame, work / "in.csv")
    out = work / "out.csv"
    args = ("iris", str(data), "-o", str(out), "--id-column", "customer", "--max-reject-rate", "1")
    result = run_batch(iris_store, *args, cwd=work)
    assert result.returncode == 0, stderr_text(result)
    scored = read_output(out, "csv")
    assert list(scored.columns) == ["customer", "prediction", "model", "version"]
    assert scored["customer"].tolist() == [f"{i:03d}" for i in range(150) if i != 7]  # "007" kept
    assert read_rejects(work / "out.csv.rejects.jsonl") == [
        {
            "row": 7,
            "id": "007",
            "reason": "wrong_type",
            "feature": "petal width (cm)",
            "message": (
                "feature 'petal width (cm)': expected a finite number, got a string ('n/a?')"
            ),
        }
    ]


def test_an_id_column_the_input_lacks_is_an_error(
    iris_store: ModelStore, iris_frame: pd.DataFrame, work: Path, cli: Cli
) -> None:
    data = write_frame(iris_frame, work / "in.csv")
    code, stderr = cli(iris_store, "iris", str(data), "-o", str(work / "o.csv"), "--id-column", "x")
    assert code == 1 and "lacks columns" in stderr
    assert sorted(os.listdir(work)) == ["in.csv"]


@pytest.mark.parametrize(
    ("args", "version"),
    [((), 1), (("--alias", "production"), 1), (("--alias", "staging"), 2), (("--version", "2"), 2)],
    ids=["default-production", "alias-production", "alias-staging", "pinned-2"],
)
def test_pinned_version_or_alias_chooses_the_model(
    iris_store: ModelStore,
    iris_artifact: Path,
    iris_artifact_v2: Path,
    iris_frame: pd.DataFrame,
    work: Path,
    cli: Cli,
    args: tuple[str, ...],
    version: int,
) -> None:
    data = write_frame(iris_frame, work / "in.csv")
    out = work / "out.csv"
    code, stderr = cli(iris_store, "iris", str(data), "-o", str(out), *args)
    assert code == 0, stderr
    scored = read_output(out, "csv")
    assert set(scored["version"]) == {version}
    artifact = iris_artifact if version == 1 else iris_artifact_v2
    assert scored["prediction"].tolist() == expected_labels(artifact, iris_frame)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--alias", "canary"), "model 'iris' has no alias 'canary' (aliases: production=1"),
        (("--version", "9"), "model 'iris' has no version 9"),
        (("--version", "1", "--alias", "staging"), "not allowed with argument"),
        (("--max-reject-rate", "2"), "--max-reject-rate must be between 0 and 1, not 2.0"),
        (("--workers", "0"), "--workers must be at least 1, not 0"),
    ],
    ids=["unknown-alias", "unknown-version", "version-and-alias", "bad-rate", "no-workers"],
)
def test_unknown_versions_aliases_and_bad_options_are_errors(
    iris_store: ModelStore, cli: Cli, args: tuple[str, ...], message: str
) -> None:
    code, stderr = cli(iris_store, "iris", "in.csv", *args)
    assert code in (1, 2) and message in stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ragged.csv", BAD_CSV.replace("6.1,2.5,4.4,1.2", "6,1,2.5,4.4,1.2"), "saw 5"),
        ("cols.csv", "a,b\n1,2\n", "lacks columns the model needs: sepal length (cm)"),
        ("broken.parquet", "PAR1 not really", "cannot read the Parquet input"),
        ("cols.jsonl", None, "No such file or directory"),
    ],
    ids=["ragged-csv-line", "missing-columns", "corrupt-parquet", "missing-file"],
)
def test_an_unreadable_input_is_a_one_line_error_and_writes_nothing(
    iris_store: ModelStore, work: Path, cli: Cli, name: str, content: str | None, message: str
) -> None:
    if content is not None:
        (work / name).write_text(content)
    code, stderr = cli(iris_store, "iris", name, "-o", "out.csv")
    assert code == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert not (work / "out.csv").exists() and not (work / "out.csv.rejects.jsonl").exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_a_model_that_fails_verification_is_a_one_line_error(
    iris_store: ModelStore, iris_frame: pd.DataFrame, work: Path
) -> None:
    (iris_store.version_dir("iris", 1) / "model.joblib").write_bytes(b"tampered")
    data = write_frame(iris_frame, work / "in.csv")
    result = run_batch(iris_store, "iris", str(data), "-o", str(work / "o.csv"), cwd=work)
    assert result.returncode == 1
    lines = stderr_text(result).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].startswith("error: model 'iris' version 1 cannot be loaded: sha256 mismatch")
    assert sorted(os.listdir(work)) == ["in.csv"]


# -- workers, interrupts, failures, the reject gate --------------------------------------------


def many_rows(rows: int, path: Path, features: int = 4, bad_every: int = 0) -> Path:
    """A large CSV of random iris-like rows, written by Arrow in blocks (fast)."""
    rng = np.random.default_rng(7)
    names = IRIS_NAMES if features == 4 else [f"f{i:02d}" for i in range(features)]
    schema = pa.schema([(n, pa.string() if bad_every else pa.float64()) for n in names])
    with pacsv.CSVWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            block = np.round(rng.uniform(0.1, 7.0, (min(100_000, rows - start), features)), 4)
            columns: list[Any] = list(block.T)
            if bad_every:
                first = [str(v) for v in columns[0]]
                for i in range((-start) % bad_every, len(first), bad_every):
                    first[i] = "oops"
                columns = [first, *[[str(v) for v in c] for c in columns[1:]]]
            writer.write_table(pa.table(dict(zip(names, columns)), schema=schema))
    return path


def test_two_workers_write_the_same_bytes_as_one(iris_store: ModelStore, work: Path) -> None:
    data = many_rows(20_000, work / "in.csv", bad_every=997)
    outputs = []
    for workers in ("1", "2"):
        out = work / f"out-{workers}.csv"
        args = ("iris", str(data), "-o", str(out), "--chunk-size", "1000", "--proba")
        result = run_batch(iris_store, *args, "--workers", workers, cwd=work)
        assert result.returncode == 0, stderr_text(result)
        outputs.append((out.read_bytes(), Path(f"{out}.rejects.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][1].count(b"\n") == 21  # one bad row in 997, rows 0, 997, ... 19940


@pytest.fixture(scope="module")
def large_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_rows(1_000_000, tmp_path_factory.mktemp("large") / "large.csv")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_interrupted_run_leaves_no_file_at_the_final_paths(
    iris_store: ModelStore, large_csv: Path, work: Path, sig: signal.Signals, workers: str
) -> None:
    out = work / "out.csv"
    args = ("iris", str(large_csv), "-o", str(out), "--chunk-size", "500", "--log-every", "0")
    proc = subprocess.Popen(
        batch_command(iris_store, *args, "--workers", workers),
        stderr=subprocess.PIPE,
        cwd=work,
        env=child_env(),
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first progress line: the run is under way
    assert b"rows/s" in first, first
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert f"interrupted ({sig.name})" in stderr.decode()
    assert os.listdir(work) == []  # no output, no rejects, no temp file


def test_a_failed_write_leaves_no_file_at_the_final_paths(
    iris_store: ModelStore, work: Path
) -> None:
    data = many_rows(50_000, work / "in.csv")
    out = work / "out" / "scored.csv"
    out.parent.mkdir()
    # The input is already written: a 256 KiB file-size limit makes the output fail mid-run.
    args = ("iris", str(data), "-o", str(out), "--chunk-size", "1000")
    result = run_batch(iris_store, *args, cwd=work, limit_bytes=256 * 1024)
    assert result.returncode == 1
    assert "File too large" in stderr_text(result) and "Traceback" not in stderr_text(result)
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize(
    ("limit", "code"),
    [((), 3), (("--max-reject-rate", "0.2"), 3), (("--max-reject-rate", "0.25"), 0)],
    ids=["default-1%", "below", "at-limit"],
)
def test_reject_rate_above_the_limit_exits_3_and_keeps_only_the_rejects(
    iris_store: ModelStore,
    iris_frame: pd.DataFrame,
    work: Path,
    cli: Cli,
    limit: tuple[str, ...],
    code: int,
) -> None:
    frame = iris_frame.head(8).astype({"sepal length (cm)": object})
    frame.loc[[2, 5], "sepal length (cm)"] = "x"  # 2 of 8 rows: 25%
    data = write_frame(frame, work / "in.csv")
    out = work / "out.csv"
    exit_code, stderr = cli(iris_store, "iris", str(data), "-o", str(out), *limit)
    assert exit_code == code, stderr
    assert len(read_rejects(work / "out.csv.rejects.jsonl")) == 2
    assert out.exists() == (code == 0)
    if code:
        assert "error: reject rate 25.00% is above --max-reject-rate" in stderr


# -- progress ---------------------------------------------------------------------------------


def test_progress_is_a_redrawn_bar_on_a_terminal(iris_store: ModelStore, work: Path) -> None:
    data = many_rows(300_000, work / "in.csv")
    args = ("iris", str(data), "-o", str(work / "out.csv"), "--chunk-size", "2000")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        batch_command(iris_store, *args), stderr=secondary, cwd=work, env=child_env()
    )
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        try:
            data_read = os.read(primary, 65536) if ready else b""
        except OSError:  # EIO: the child closed the pty
            data_read = b""
        if not data_read:
            break
        seen += data_read
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    text = seen.decode()
    assert "\r[" in text and "rows/s" in text and "ETA 0:" in text
    assert "300,000 rows read, 300,000 written" in text


def test_progress_is_plain_lines_off_a_terminal(iris_store: ModelStore, work: Path) -> None:
    data = many_rows(5_000, work / "in.csv")
    args = ("iris", str(data), "-o", str(work / "out.csv"), "--chunk-size", "1000")
    result = run_batch(iris_store, *args, "--log-every", "0", cwd=work)
    assert result.returncode == 0
    lines = stderr_text(result).splitlines()
    assert "\r" not in stderr_text(result)
    assert lines[0].startswith("batch iris v1: 1,000 rows, ") and "rows/s" in lines[0]
    assert len(lines) == 6 and "5,000 rows read" in lines[-1]


# -- parity with the REST API -----------------------------------------------------------------


def test_same_predictions_as_the_rest_api(
    iris_store: ModelStore,
    iris_frame: pd.DataFrame,
    make_app: Callable[..., Flask],
    work: Path,
) -> None:
    rows = iris_frame.sample(100, random_state=3)
    data = write_frame(rows, work / "in.csv")
    out = work / "out.jsonl"
    args = ("iris", str(data), "-o", str(out), "--proba", "--id-column", "customer")
    result = run_batch(iris_store, *args, cwd=work)
    assert result.returncode == 0, stderr_text(result)
    scored = read_output(out, "jsonl")
    instances = rows[IRIS_NAMES].to_dict("records")
    response = (
        make_app()
        .test_client()
        .post("/v1/models/iris/predict", json={"instances": instances, "return_proba": True})
    )
    body = response.get_json()
    assert scored["customer"].tolist() == rows["customer"].tolist()
    assert scored["prediction"].tolist() == body["predictions"]
    columns = [f"proba_{c}" for c in body["classes"]]
    assert scored[columns].to_numpy().tolist() == body["probabilities"]
    assert set(scored["version"]) == {body["version"]}


# -- memory -----------------------------------------------------------------------------------


# Linux keeps a child's peak RSS from before exec (a copy of its parent): a child forked from
# pytest would report pytest's size. A tiny launcher spawns the command and reports its rusage.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_mb(command: list[str], cwd: Path) -> float:
    """Peak RSS of `command` alone, in MB."""
    launched = [sys.executable, "-S", "-c", LAUNCHER, *command]
    result = subprocess.run(
        launched, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120
    )
    code, peak_kb = result.stdout.split()[-2:]
    assert code == "0", result.stderr
    return int(peak_kb) / 1024


@pytest.mark.slow
def test_memory_stays_flat_however_large_the_file(store: ModelStore, tmp_path: Path) -> None:
    started = time.monotonic()
    big = many_rows(300_000, tmp_path / "big.csv", features=20)
    small = tmp_path / "small.csv"
    with open(big, "rb") as source, open(small, "wb") as target:
        target.writelines(source.readline() for _ in range(30_001))
    train = pd.read_csv(small, nrows=2_000)
    model = LogisticRegression(max_iter=500).fit(
        train, train.sum(axis=1) > train.sum(axis=1).median()
    )
    joblib.dump(model, tmp_path / "wide.joblib")
    store.register("wide", tmp_path / "wide.joblib", activate=True, actor="test")
    peaks = {}
    for path in (small, big):
        args = ("wide", str(path), "-o", str(tmp_path / "out.csv"), "--chunk-size", "10000")
        peaks[path.name] = peak_rss_mb(batch_command(store, *args), tmp_path)
    # Ten times the rows, same chunks: the peak must not follow the file (a few MB of noise).
    assert peaks["big.csv"] < peaks["small.csv"] + 16, peaks
    assert time.monotonic() - started < 60


def test_background_writes_run_in_order_and_raise_the_first_error() -> None:
    from serving.batch.writing import BackgroundWrites

    done: list[int] = []
    writes = BackgroundWrites()
    for i in range(50):
        writes.submit(lambda i=i: done.append(i))
    writes.close()
    assert done == list(range(50))

    def fail() -> None:
        raise OSError(28, "No space left on device")

    failing = BackgroundWrites(ahead=1)
    failing.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):  # raised at a later submit, once the thread has run `fail`
            failing.submit(lambda i=i: done.append(100 + i))
            time.sleep(0.01)
    with pytest.raises(OSError, match="No space left"):
        failing.close()
    assert all(i < 100 for i in done)  # nothing was written after the error


def test_aborted_background_writes_skip_what_was_not_started() -> None:
    import threading

    from serving.batch.writing import BackgroundWrites

    started, release, done = threading.Event(), threading.Event(), []

    def slow() -> None:
        started.set()
        release.wait(5)
        done.append("slow")

    writes = BackgroundWrites(ahead=2)
    writes.submit(slow)
    writes.submit(lambda: done.append("queued"))
    assert started.wait(5)
    aborter = threading.Thread(target=writes.abort)  # waits for the running write
    aborter.start()
    deadline = time.monotonic() + 5
    while writes._error is None and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    aborter.join(5)
    assert done == ["slow"]  # the running write finished; the queued one never ran
