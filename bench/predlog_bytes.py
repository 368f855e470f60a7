"""Bytes per logged prediction in SQLite: the pages in use over the rows written.

    .venv/bin/python -m bench.predlog_bytes [--rows 5000]

Writes `--rows` records through `SQLiteRecorder` into a temp `serving.db`, for requests of 1
and 100 iris instances given as arrays and as objects (named features), with the default
SERVING_LOG_INPUT_ROWS (10), and prints the bytes each record costs (tables and indexes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog import SQLiteRecorder
from serving.telemetry.recorder import PredictionRecord

NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
VALUES = [5.1, 3.5, 1.4, 0.2]
LABELS = ["setosa", "versicolor", "virginica"]


def bytes_per_record(records: int, instances: int, named: bool) -> float:
    row = dict(zip(NAMES, VALUES, strict=True)) if named else VALUES
    outputs = np.array([LABELS[i % 3] for i in range(instances)], dtype=object)
    with tempfile.TemporaryDirectory() as tmp:
        datastore = DataStore(Path(tmp))
        recorder = SQLiteRecorder(datastore, flush_interval=3600.0)
        for i in range(records):
            recorder.record(
                PredictionRecord(
                    str(uuid.uuid4()), time.time(), "iris", 1, "production", None, 200,
                    1.2345, instances, [row] * instances, outputs,
                )
            )  # fmt: skip
            if i % 500 == 499:
                recorder.flush()
        recorder.flush()
        used = datastore.engine.used_bytes(datastore.connect())
        recorder.close()
    return used / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    result = {
        f"{n}-{'objects' if named else 'arrays'}": round(bytes_per_record(args.rows, n, named))
        for n in (1, 100)
        for named in (False, True)
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
