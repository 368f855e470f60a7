"""`models register` options: safe artifacts (--format skops, --trusted-types[-file]) and
the features that take missing values (--nullable, --not-nullable)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from serving.errors import StoreError
from serving.store.artifact_policy import ArtifactPolicy


def add_arguments(register: Any) -> None:
    register.add_argument(
        "--format",
        choices=("skops",),
        help="store a joblib/pickle estimator as model.skops (predictions checked identical)",
    )
    register.add_argument(
        "--trusted-types",
        default="",
        help="comma-separated types a skops file may hold beyond skops' safe defaults",
    )
    register.add_argument(
        "--trusted-types-file",
        type=Path,
        help="a reviewed allow-list: one type per line, # comments",
    )


def add_nullable_arguments(register: Any) -> None:
    register.add_argument(
        "--nullable",
        default="",
        help="comma-separated numeric features that take null/NaN (default: probed on the model)",
    )
    register.add_argument(
        "--not-nullable",
        default="",
        help="comma-separated features that refuse null/NaN even if the model would answer",
    )


def nullable(args: argparse.Namespace) -> dict[str, bool]:
    """Feature -> nullable, from --nullable and --not-nullable; naming one in both is an error."""
    yes = {c.strip() for c in args.nullable.split(",") if c.strip()}
    no = {c.strip() for c in args.not_nullable.split(",") if c.strip()}
    if yes & no:
        raise StoreError(f"--nullable and --not-nullable both name: {', '.join(sorted(yes & no))}")
    return {**dict.fromkeys(yes, True), **dict.fromkeys(no, False)}


def policy(args: argparse.Namespace) -> ArtifactPolicy:
    """The register policy from the command line; SERVING_ALLOW_PICKLE decides about pickle."""
    accepted = {t.strip() for t in args.trusted_types.split(",") if t.strip()}
    if args.trusted_types_file is not None:
        accepted |= read_trusted_types_file(args.trusted_types_file)
    return ArtifactPolicy(to_skops=args.format == "skops", trusted_types=frozenset(accepted))


def read_trusted_types_file(path: Path) -> set[str]:
    """Types listed one per line; blank lines and anything after '#' are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the trusted types file ({exc.strerror})") from None
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}
