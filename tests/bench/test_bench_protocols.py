"""The benchmark's request bodies and response parsers for each contestant's protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import protocols, report

ROWS = [[0.5, 1.0, -2.0], [3.0, 4.0, 5.0]]
COLUMNS = ["f00", "f01", "f02"]


def test_v2_body_is_one_fp64_tensor_of_shape_rows_by_features() -> None:
    body = json.loads(protocols.V2.body(ROWS, COLUMNS))

    assert body == {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 3],
                "datatype": "FP64",
                "data": [0.5, 1.0, -2.0, 3.0, 4.0, 5.0],
            }
        ]
    }


def test_mlflow_body_is_a_split_dataframe_with_the_named_columns() -> None:
    body = json.loads(protocols.MLFLOW.body(ROWS, COLUMNS))

    assert body == {"dataframe_split": {"columns": COLUMNS, "data": ROWS}}


def test_native_body_sends_instances_as_lists() -> None:
    assert json.loads(protocols.NATIVE.body(ROWS, COLUMNS)) == {"instances": ROWS}


@pytest.mark.parametrize(
    ("protocol", "model", "path"),
    [
        (protocols.NATIVE, "rf", "/v1/models/rf/predict"),
        (protocols.V2, "rf", "/v2/models/rf/infer"),
        (protocols.MLFLOW, "rf", "/invocations"),
    ],
    ids=["native", "v2", "mlflow"],
)
def test_each_protocol_posts_to_its_own_path(protocol, model, path) -> None:
    assert protocol.path(model) == path


@pytest.mark.parametrize(
    ("protocol", "payload", "expected"),
    [
        (protocols.NATIVE, {"model": "lr", "version": 1, "predictions": [1, 0]}, [1, 0]),
        (protocols.MLFLOW, {"predictions": [1, 0]}, [1, 0]),
        (
            protocols.V2,
            {
                "outputs": [
                    {"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [1, 0]}
                ]
            },
            [1, 0],
        ),
        (protocols.V2, {"outputs": [{"shape": [2], "data": [1, 0]}]}, [1, 0]),
    ],
    ids=["native", "mlflow", "v2-column", "v2-flat"],
)
def test_predictions_are_read_from_each_protocols_response(protocol, payload, expected) -> None:
    assert protocol.predictions(json.dumps(payload).encode()) == expected


@pytest.mark.parametrize(
    ("protocol", "payload"),
    [
        (protocols.V2, {"outputs": [{"shape": [2, 3], "data": [0] * 6}]}),
        (protocols.V2, {"outputs": [{"shape": [3], "data": [1, 0]}]}),
        (protocols.V2, {"error": "model not found"}),
        (protocols.MLFLOW, {"error_code": "BAD_REQUEST"}),
    ],
    ids=["v2-probabilities", "v2-short", "v2-error", "mlflow-error"],
)
def test_a_response_without_one_prediction_per_row_is_refused(protocol, payload) -> None:
    with pytest.raises(ValueError):
        protocol.predictions(json.dumps(payload).encode())


def test_write_bodies_writes_the_same_rows_in_every_protocol(tmp_path: Path) -> None:
    bodies = protocols.write_bodies(tmp_path, {1: ROWS[:1], 2: ROWS}, COLUMNS)

    assert set(bodies) == {(p.name, n) for p in protocols.ALL for n in (1, 2)}
    assert json.loads(bodies[("mlflow", 2)].read_bytes())["dataframe_split"]["data"] == ROWS
    assert json.loads(bodies[("v2", 1)].read_bytes())["inputs"][0]["shape"] == [1, 3]


def _cell(contestant: str, rps: float, p99: float) -> dict:
    return {
        "phase": "peers",
        "contestant": contestant,
        "model": "lr",
        "rows": 1,
        "connections": 8,
        "rps": rps,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": p99},
        "cpu_ms_per_request": 1.0,
        "other_cores": 0.1,
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }


def test_peers_summary_takes_each_contestants_median_over_the_rounds() -> None:
    cells = [_cell("ours", 900, 9), _cell("ours", 1100, 11), _cell("ours", 1000, 10)]
    cells += [_cell("mlserver", 400, 20), {**_cell("x", 1, 1), "phase": "matrix"}]

    summary = report.peers_summary({"mlserver": {"status": "ok"}}, cells)

    (entry,) = summary["table"]
    assert entry["contestants"]["ours"]["rps"] == 1000
    assert entry["contestants"]["ours"]["p99_ms"] == 10
    assert entry["contestants"]["ours"]["rounds"] == 3
    assert set(entry["contestants"]) == {"ours", "mlserver"}


def test_a_peer_whose_install_failed_is_reported_with_the_end_of_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import peers

    monkeypatch.setattr(peers, "VENVS", tmp_path)
    (tmp_path / "mlflow.install.log").write_text(
        "WARNING: Location 'file:///x' is ignored\n"
        "ERROR: No matching distribution found for mlflow-skinny==9.9\n"
    )

    with pytest.raises(peers.PeerError, match=r"not installed.*No matching distribution"):
        peers.MLFLOW.check_installed()
    with pytest.raises(peers.PeerError, match="run `make bench-peers`"):
        peers.MLSERVER.check_installed()
