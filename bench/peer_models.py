"""Export the benchmark's models for a peer server, run with that peer's own Python.

    <peer venv>/bin/python -m bench.peer_models {mlserver|mlflow} OUT_DIR

Each peer loads what its own scikit-learn saved: the models are fitted here, inside the peer's
virtualenv, by the same code on the same data with the same seeds as ours (bench/fixtures.py),
instead of unpickling our artifacts with another scikit-learn version.

- mlserver: `OUT_DIR/<model>/model.joblib` + `model-settings.json` (mlserver_sklearn runtime),
  fitted on the plain array, since MLServer hands the V2 tensor to `predict` as an ndarray.
- mlflow: `OUT_DIR/<model>/` written by `mlflow.sklearn.save_model` with a signature inferred
  from the 20 named columns, fitted on the DataFrame (`/invocations` gets `dataframe_split`).

Imports only the standard library, bench.fixtures and what the peer's virtualenv has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import fixtures


def export_mlserver(out: Path) -> None:
    import joblib

    frame, y = fixtures.training_data()
    for name, model in fixtures.train(frame.to_numpy(), y).items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def export_mlflow(out: Path) -> None:
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    frame, y = fixtures.training_data()
    for name, model in fixtures.train(frame, y).items():
        signature = infer_signature(frame.head(5), model.predict(frame.head(5)))
        mlflow.sklearn.save_model(
            model,
            str(out / name),
            signature=signature,
            # MLflow 3 saves with skops by default and refuses a forest's tree type unless it
            # is named as trusted: we made the file ourselves a moment ago
            skops_trusted_types=["sklearn.tree._tree.Tree"] if name == "rf" else None,
            # given, so that saving does not spend seconds inferring requirements
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        )


def main(argv: list[str]) -> None:
    peer, out = argv[0], Path(argv[1])
    {"mlserver": export_mlserver, "mlflow": export_mlflow}[peer](out)


if __name__ == "__main__":
    main(sys.argv[1:])
