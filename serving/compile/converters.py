"""What skl2onnx needs beyond its own converters: LightGBM and XGBoost, and missing values.

- `prepare()` registers onnxmltools' converters for the LightGBM and XGBoost scikit-learn API
  estimators with skl2onnx (once; only for a library already imported, which unpickling the
  model did: neither is a runtime dependency of the server).
- `unsupported(model)` names what skl2onnx would convert silently wrong (HistGradientBoosting's
  native categorical splits), to refuse it in one line rather than at the parity gate.
- `for_conversion(model)` gives what the converters can read: an XGBoost booster fitted on a
  DataFrame names its features after the columns, the converter wants f0..fn (a copy is cleared).
- `int_flags()`: skl2onnx passes Python booleans in `nodes_missing_value_tracks_true` (the
  HistGradientBoosting leaves), which protobuf's ints field refuses; they go in as 0/1.
- `route_missing_like_sklearn(onx, model)`: skl2onnx writes 0 there for scikit-learn's
  DecisionTree* and forests, so NaN always went right; scikit-learn follows each node's
  `missing_go_to_left`, and now so does the ONNX model.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from typing import Any

# skl2onnx 1.20 writes up to opset 22, ONNX Runtime 1.32 runs it; IsolationForest's converter
# needs ai.onnx.ml 3 (skl2onnx's default picks lower for it).
TARGET_OPSET = {"": 22, "ai.onnx.ml": 3}
CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_registered: set[str] = set()  # mirrors skl2onnx's own process-wide converter registry


def prepare() -> None:
    """Register the LightGBM and XGBoost converters of the libraries imported (idempotent)."""
    if "lightgbm" in sys.modules and "lightgbm" not in _registered:
        _register_lightgbm()
        _registered.add("lightgbm")
    if "xgboost" in sys.modules and "xgboost" not in _registered:
        _register_xgboost()
        _registered.add("xgboost")


def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options=CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
    )


def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    # onnxmltools' own calculate_xgboost_classifier_output_shapes checks the input against
    # onnxmltools' FloatTensorType class and refuses skl2onnx's: skl2onnx's calculator it is.
    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options=CLASSIFIER_OPTIONS,
    )
    update_registered_converter(
        XGBRegressor,
        "XGBoostXGBRegressor",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


def estimators(model: Any) -> Iterator[Any]:
    """The model and, for a Pipeline, its steps (recursively)."""
    yield model
    for _, step in getattr(model, "steps", None) or []:
        yield from estimators(step)


def unsupported(model: Any) -> str | None:
    """Why skl2onnx would convert the model wrong, for what it converts without complaint."""
    for estimator in estimators(model):
        categorical = getattr(estimator, "is_categorical_", None)
        if categorical is not None and bool(categorical.any()):
            return (
                f"{type(estimator).__name__} uses native categorical splits "
                "(categorical_features), which skl2onnx's converter ignores"
            )
    return None


def for_conversion(model: Any) -> Any:
    """The model, or a copy whose XGBoost boosters have no feature names (f0..fn for ONNX)."""
    if not any(_xgb_names(e) for e in estimators(model)):
        return model
    model = copy.deepcopy(model)
    for estimator in estimators(model):
        if _xgb_names(estimator):
            estimator.get_booster().feature_names = None
    return model


def _xgb_names(estimator: Any) -> bool:
    if not type(estimator).__module__.startswith("xgboost"):
        return False
    try:
        return bool(estimator.get_booster().feature_names)
    except Exception:  # not fitted, or not a booster-backed estimator: nothing to clear
        return False


@contextlib.contextmanager
def int_flags() -> Iterator[None]:
    """While converting: `nodes_missing_value_tracks_true` reaches protobuf as ints, not bools."""
    from skl2onnx.common._container import ModelComponentContainer

    original = ModelComponentContainer.add_node

    def add_node(self: Any, *args: Any, **attrs: Any) -> Any:
        flags = attrs.get("nodes_missing_value_tracks_true")
        if flags is not None:
            attrs["nodes_missing_value_tracks_true"] = [int(flag) for flag in flags]
        return original(self, *args, **attrs)

    ModelComponentContainer.add_node = add_node  # type: ignore[method-assign]
    try:
        yield
    finally:
        ModelComponentContainer.add_node = original  # type: ignore[method-assign]


def route_missing_like_sklearn(onx: Any, model: Any) -> None:
    """Set each tree node's missing-value direction from scikit-learn's `missing_go_to_left`,
    for DecisionTree*/RandomForest*/ExtraTrees* (one ONNX tree ensemble each, in order)."""
    forests = [trees for trees in map(_sklearn_trees, estimators(model)) if trees]
    nodes = [n for n in onx.graph.node if n.op_type in _TREE_OPS and n.domain == "ai.onnx.ml"]
    if not forests or len(forests) != len(nodes):
        return  # not scikit-learn trees, or no one-to-one match: the parity gate decides
    for node, trees in zip(nodes, forests):
        _set_missing(node, trees)


def _sklearn_trees(estimator: Any) -> list[Any]:
    """The fitted `tree_` objects of a scikit-learn decision tree or forest, by ONNX tree id."""
    from sklearn.ensemble._forest import BaseForest
    from sklearn.tree import BaseDecisionTree

    if isinstance(estimator, BaseDecisionTree):
        return [estimator.tree_]
    if isinstance(estimator, BaseForest):
        return [tree.tree_ for tree in estimator.estimators_]
    return []


def _set_missing(node: Any, trees: list[Any]) -> None:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    modes = [m.decode() if isinstance(m, bytes) else m for m in attrs["nodes_modes"]]
    flags = [
        0 if mode == "LEAF" else int(trees[tree].missing_go_to_left[node_id])
        for tree, node_id, mode in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"], modes)
    ]
    kept = [a for a in node.attribute if a.name != "nodes_missing_value_tracks_true"]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute("nodes_missing_value_tracks_true", flags))
