"""Gradient-boosted tree families (XGBoost, LightGBM) on the three-way barrier label.

Choices, and why:

* **No early stopping on the validation window.** Picking the number of trees by the
  validation loss would make the validation metrics in-sample for that choice; the tree
  count comes from the config instead, and the validation window stays out-of-sample.
* **Regularisation by default** (row/column subsampling, a minimum leaf size, L2 on leaf
  weights): 5-minute crypto returns are mostly noise, and an unregularised booster fits it.
* **Deterministic.** Fixed seeds (`cfg.seed`), histogram methods whose results do not
  depend on thread scheduling, two threads (the learner runs beside a live daemon).

Heavy imports stay inside the functions: this module is imported by the learner process
only, but keeping them local also keeps `python -m qtraderd.training --help` instant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtraderd.core.config import Config
from qtraderd.training.dataset import Dataset

FAMILIES = ("xgboost", "lightgbm")
N_CLASSES = 3
N_JOBS = 2


class TrainError(RuntimeError):
    """A model family could not be trained on this dataset."""


def _check_classes(ds: Dataset, family: str) -> None:
    present = np.unique(ds.train.y)
    if not np.array_equal(present, np.arange(N_CLASSES)):
        raise TrainError(
            f"{family}: the training window has classes {present.tolist()}, need all of "
            f"0 (none), 1 (long), 2 (short); widen the window or change the barriers")


def xgboost_params(cfg: Config) -> dict[str, Any]:
    """The XGBClassifier parameters (recorded verbatim in the artifact metadata)."""
    t = cfg.train
    return {
        "objective": "multi:softprob",
        "num_class": N_CLASSES,
        "n_estimators": t.n_estimators,
        "max_depth": t.max_depth,
        "learning_rate": t.learning_rate,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 5.0,
        "reg_lambda": 1.0,
        "tree_method": "hist",
        "max_bin": 256,
        "eval_metric": "mlogloss",
        "random_state": cfg.seed,
        "n_jobs": N_JOBS,
    }


def lightgbm_params(cfg: Config) -> dict[str, Any]:
    """The LGBMClassifier parameters (recorded verbatim in the artifact metadata)."""
    t = cfg.train
    return {
        "objective": "multiclass",
        "n_estimators": t.n_estimators,
        "max_depth": t.max_depth,
        # A depth-d tree has at most 2**d leaves; LightGBM grows leaf-wise, so cap both.
        "num_leaves": max(2, min(2 ** t.max_depth - 1, 31)),
        "learning_rate": t.learning_rate,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "min_child_samples": 50,
        "reg_lambda": 1.0,
        "random_state": cfg.seed,
        "n_jobs": N_JOBS,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def train_xgboost(ds: Dataset, cfg: Config) -> Any:
    """Fit an XGBClassifier (multi:softprob, 3 classes) on the training rows only."""
    from xgboost import XGBClassifier

    _check_classes(ds, "xgboost")
    tr = ds.train
    model = XGBClassifier(**xgboost_params(cfg))
    model.fit(tr.X, tr.y)
    return model


def train_lightgbm(ds: Dataset, cfg: Config) -> Any:
    """Fit an LGBMClassifier (multiclass) on the training rows only."""
    from lightgbm import LGBMClassifier

    _check_classes(ds, "lightgbm")
    tr = ds.train
    model = LGBMClassifier(**lightgbm_params(cfg))
    model.fit(tr.X, tr.y)
    return model


def params_for(family: str, cfg: Config) -> dict[str, Any]:
    if family == "xgboost":
        return xgboost_params(cfg)
    if family == "lightgbm":
        return lightgbm_params(cfg)
    raise TrainError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")


def train(family: str, ds: Dataset, cfg: Config) -> Any:
    """Dispatch by family name (the CLI's --families values)."""
    if family == "xgboost":
        return train_xgboost(ds, cfg)
    if family == "lightgbm":
        return train_lightgbm(ds, cfg)
    raise TrainError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
