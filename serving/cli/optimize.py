"""`serving optimize NAME VERSION --onnx|--quantize`: compile a version into a new one."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from serving.cli.tables import print_parity_failure
from serving.store.base import StoreBase

if TYPE_CHECKING:
    from serving.compile.quantize import QuantGate


def add_parser(verbs: Any) -> None:
    opt = verbs.add_parser("optimize", help="compile a version (ONNX) into a new version")
    opt.add_argument("name")
    opt.add_argument("version", type=int)
    opt.add_argument("--onnx", action="store_true", help="convert with skl2onnx, serve with ORT")
    opt.add_argument(
        "--quantize", action="store_true", help="ONNX with int8 MatMul weights (MLP, PCA...)"
    )
    opt.add_argument(
        "--min-label-agreement",
        type=float,
        default=0.99,
        help="--quantize gate: share of labels equal to the original's (default 0.99)",
    )
    opt.add_argument(
        "--max-proba-diff",
        type=float,
        default=0.1,
        help="--quantize gate: largest probability difference (default 0.1)",
    )
    opt.add_argument(
        "--max-value-diff",
        type=float,
        default=0.05,
        help="--quantize gate, regressors: largest difference in output std units (default 0.05)",
    )
    opt.set_defaults(run=run)


def run(store: StoreBase, args: argparse.Namespace) -> int:
    if not (args.onnx or args.quantize):
        print(
            "error: say how to optimize: --onnx, --quantize (int8, implies --onnx)", file=sys.stderr
        )
        return 1
    from serving.compile.onnx import ParityError, optimize  # skl2onnx, onnxruntime: only here

    gate = _gate(args) if args.quantize else None
    try:
        version, report = optimize(store, args.name, args.version, args.actor, gate)
    except ParityError as exc:
        print_parity_failure(exc)
        return 1
    print(f"{args.name}: version {version} {_summary(args.version, report, gate)}", file=sys.stderr)
    print(version)
    return 0


def _gate(args: argparse.Namespace) -> QuantGate:
    from serving.compile.quantize import QuantGate

    return QuantGate(args.min_label_agreement, args.max_proba_diff, args.max_value_diff)


def _summary(source: int, report: dict[str, Any], gate: QuantGate | None) -> str:
    from serving.compile.parity import ABS_TOL, REL_TOL

    rows = report["rows"]
    if report.get("rows_with_missing_values"):
        rows = f"{rows} ({report['rows_with_missing_values']} with missing values)"
    if gate is None:
        return (
            f"(ONNX) from version {source}; parity ok on {rows} rows "
            f"(labels equal, |diff| <= {ABS_TOL:g} + {REL_TOL:g}*|value|)"
        )
    if "label_agreement" in report:
        measured = f"labels agree on {report['label_agreement']:.2%}"
        if "proba_max_abs_diff" in report:
            measured += f", max |probability diff| {report['proba_max_abs_diff']:.4f}"
    else:
        measured = (
            f"max |diff| {report['output_max_abs_diff']:.4g} ({report['output_std']:.4g} std)"
        )
    return f"(ONNX, int8) from version {source}; parity gate passed on {rows} rows: {measured}"
