"""Score rows with this edge bundle: numpy and onnxruntime only (written by `serving export`).

As a program: `python predict.py [--bundle DIR] [--proba] FILE.csv|FILE.jsonl|-` prints one JSON
object per row, in order: {"prediction": ...} (and "proba": {class: p} with --proba), or
{"error": ...} for a row the server would refuse with 422 (the exit status is 2 then). CSV needs
a header of feature names (an empty cell is null); JSON lines are lists of values or objects
keyed by feature name; `-` reads stdin (JSON lines if it starts with `[` or `{`, else CSV).
As a module, with the bundle's directory on sys.path: `predict.load(DIR).predict(rows)`.

Loading checks the sha256 of every file manifest.json lists and refuses the bundle if any is
missing or changed. This file is copied into every bundle: it imports nothing from `serving`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 10_000  # rows per ONNX Runtime call in the program


class BundleError(Exception):
    """The bundle is incomplete, or a file differs from its manifest: refused."""


class InvalidRow(ValueError):
    """A row the server would refuse with 422; the message is the server's."""


class Bundle:
    """A verified bundle: its schema, and an ONNX Runtime session on one thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = verified_manifest(root)
        self.schema = json.loads((root / "schema.json").read_text("utf-8"))
        self.features: list[dict[str, Any]] = self.schema["features"]
        self.labels = [f["name"] for f in self.features]
        self.named = bool(self.schema.get("named", True))
        self.task = self.schema["task"]
        self.classes = self.schema.get("classes")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(root / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def predict(self, rows: list[Any]) -> list[Any]:
        """Labels (classifier) or values, as `predictions` of the server's /v1 predict."""
        return self.run(self.matrix(rows), proba=False)[0]

    def predict_proba(self, rows: list[Any]) -> list[list[float]]:
        """Class probabilities in the order of `classes`, as the server's `probabilities`."""
        return self.run(self.matrix(rows), proba=True)[1]  # type: ignore[return-value]

    def matrix(self, rows: list[Any]) -> np.ndarray:
        """The rows as the model's float32 input, or InvalidRow for the first bad one."""
        if type(rows) not in (list, tuple):
            raise InvalidRow("instances: must be a list of instances (rows or objects)")
        out = np.empty((len(rows), len(self.features)), dtype=np.float64)
        objects = bool(rows) and type(rows[0]) is dict  # as the server: instance 0 decides
        for i, row in enumerate(rows):
            out[i] = self.row(i, row, objects)
        return out.astype(np.float32)

    def run(self, x: np.ndarray, proba: bool) -> tuple[list[Any], list[list[float]] | None]:
        """(predictions, probabilities or None) for a float32 matrix of valid rows."""
        if proba and (self.task != "classifier" or len(self._outputs) < 2):
            raise InvalidRow("this model has no probabilities")
        outputs = self._outputs[:2] if proba else self._outputs[:1]
        if len(x) == 0:
            return [], [] if proba else None
        found = self._session.run(outputs, {self._input: x})
        values = np.asarray(found[0])
        values = values.ravel() if values.ndim == 2 and values.shape[1] == 1 else values
        if self.task == "classifier" and self.classes:
            values = values.astype(np.asarray(self.classes).dtype)
        elif self.task != "classifier":
            integer = self.task == "other" and self.schema.get("output_dtype") == "int64"
            values = values.astype(np.int64 if integer else np.float64)
        probabilities = np.asarray(found[1], dtype=np.float64).tolist() if proba else None
        return values.tolist(), probabilities

    def row(self, i: int, row: Any, objects: bool | None = None) -> list[float]:
        """One instance (a list of values or an object keyed by name) as numbers. `objects`:
        whether the batch is of objects (its instance 0 is one); None: this row decides."""
        if objects is None:
            objects = type(row) is dict
        if objects and self.named:
            if type(row) is not dict:
                raise InvalidRow(
                    f"instance {i}: expected an object like instance 0, got {_kind(row)}"
                )
            row = self._from_object(i, row)
        if type(row) not in (list, tuple):
            keyed = " or an object keyed by feature name" if self.named else ""
            raise InvalidRow(
                f"instance {i}: expected a list of {len(self.features)} values{keyed}, "
                f"got {_kind(row)}"
            )
        if len(row) != len(self.features):
            raise InvalidRow(
                f"instance {i}: expected {len(self.features)} features, got {len(row)}"
            )
        return [self._number(i, f, v) for f, v in zip(self.features, row)]

    def _from_object(self, i: int, obj: dict[str, Any]) -> list[Any]:
        unknown = sorted(set(obj) - set(self.labels))
        if unknown:
            raise InvalidRow(f"instance {i}: unknown feature {unknown[0]!r}")
        missing = [name for name in self.labels if name not in obj]
        if missing:
            raise InvalidRow(f"instance {i}: missing feature {missing[0]!r}")
        return [obj[name] for name in self.labels]

    def _number(self, i: int, feature: dict[str, Any], value: Any) -> float:
        kind, boolean = type(value), feature["kind"] == "boolean"
        if kind is bool and boolean:
            return 1.0 if value else 0.0
        if kind is float and math.isfinite(value):
            return value
        if kind is int:
            try:
                return float(value)
            except OverflowError:
                pass
        nullable = bool(feature.get("nullable"))
        if nullable and (value is None or (kind is float and math.isnan(value))):
            return math.nan
        expected = "a finite number"
        if boolean:
            expected = "true, false or a number"
        elif nullable:
            expected = "a finite number or null"
        raise InvalidRow(
            f"instance {i}, feature {feature['name']!r}: expected {expected}, "
            f"got {_describe(value)}"
        )


def load(directory: str | Path) -> Bundle:
    """The bundle in `directory`, every file checked against manifest.json (else BundleError)."""
    return Bundle(Path(directory))


def verified_manifest(root: Path) -> dict[str, Any]:
    """manifest.json, once every file it lists has its sha256; else BundleError."""
    try:
        manifest = json.loads((root / "manifest.json").read_text("utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{root}: no readable manifest.json ({exc})") from None
    for required in ("model.onnx", "schema.json"):
        if required not in files:
            raise BundleError(f"manifest.json does not list {required}; refused")
    for name, entry in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise BundleError(f"{name}: missing from the bundle; refused")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry.get("sha256"):
            raise BundleError(
                f"{name}: sha256 {digest[:12]}... differs from the manifest's "
                f"{str(entry.get('sha256'))[:12]}... (changed or corrupt); refused"
            )
    return manifest


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return kinds.get(type(value), "null" if value is None else "a number")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return f"a boolean ({'true' if value else 'false'})"
    if type(value) is str:
        return f"a string ({value if len(value) <= 40 else value[:37] + '...'!r})"
    if type(value) is float:
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int:
        return "an integer outside the float64 range"
    return _kind(value)


# -- the program ---------------------------------------------------------------------------


def read_rows(text: str, bundle: Bundle) -> list[Any]:
    """JSON lines, or CSV with a header of feature names (an empty cell is null)."""
    if text.lstrip()[:1] in ("[", "{"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    kinds = {f["name"]: f["kind"] for f in bundle.features}
    reader = csv.DictReader(io.StringIO(text))
    return [{k: _cell(v, kinds.get(k)) for k, v in record.items()} for record in reader]


def _cell(text: str | None, kind: str | None) -> Any:
    text = (text or "").strip()
    if text == "":
        return None
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def score(bundle: Bundle, rows: list[Any], proba: bool) -> tuple[list[dict[str, Any]], int]:
    """One result per row, in order; a bad row gets its error, the others are scored."""
    results: list[dict[str, Any]] = [{} for _ in rows]
    good, values = [], []
    for i, row in enumerate(rows):
        try:
            values.append(bundle.row(i, row))
            good.append(i)
        except InvalidRow as exc:
            results[i] = {"error": str(exc)}
    for start in range(0, len(good), CHUNK):
        x = np.asarray(values[start : start + CHUNK], dtype=np.float64).astype(np.float32)
        labels, probas = bundle.run(x, proba)
        for k, i in enumerate(good[start : start + CHUNK]):
            results[i] = {"prediction": labels[k]}
            if probas is not None:
                results[i]["proba"] = dict(zip(map(str, bundle.classes or []), probas[k]))
    return results, len(rows) - len(good)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("input", help="FILE.csv, FILE.jsonl, or - for stdin")
    parser.add_argument("--proba", action="store_true", help="add class probabilities")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    try:
        bundle = load(args.bundle)
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text("utf-8")
        rows = read_rows(text, bundle)
        results, refused = score(bundle, rows, args.proba)
    except (BundleError, OSError, ValueError) as exc:  # InvalidRow: --proba on a regressor
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(json.dumps(r) + "\n" for r in results))
    return 2 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
