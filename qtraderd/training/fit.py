"""Train and export one family: the part of a job that may run on a Ray worker.

`train_export` is the whole heavy step (fit, ONNX export, parity check, ONNX probabilities
on the validation rows) and returns only plain data (`Trained`: the ONNX bytes and
numbers), so it can run here or in a Ray task and come back the same: the job then writes
the artifact, evaluates and gates it locally either way (cli.build_candidate).

`train_task(family, shared)` is the module-level function a Ray worker imports;
`shared` is `(dataset, config)`, shipped to the object store once per job
(`run_families`). The executor and its fallback are chosen by `learning.executor`,
`learning.ray_address` and `learning.fallback` (`open_cluster`).
"""

from __future__ import annotations

import importlib
import logging
import pickle
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtraderd.core.config import Config
from qtraderd.training import export as export_mod
from qtraderd.training import nets_train, trees
from qtraderd.training.cluster import ClusterUnavailable, RayExecutor, open_executor
from qtraderd.training.dataset import Dataset

log = logging.getLogger("qtraderd.training")

LOCAL = "local"


class ClusterSkipped(RuntimeError):
    """The Ray cluster was unreachable and `learning.fallback = "skip"`."""


@dataclass
class Trained:
    """One family's trained and exported model, as plain data (picklable, no library objects)."""

    family: str
    onnx_bytes: bytes
    proba: np.ndarray  # onnxruntime probabilities on the validation rows
    parity_max_abs_diff: float
    parity_rows: int
    probe_inputs: list[Any]
    probe_outputs: list[list[float]]
    train_seconds: float
    export_seconds: float
    input_kind: str
    input_name: str
    output_name: str
    data_end: int
    params: dict[str, Any] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: str = LOCAL


def split_params(cfg: Config) -> dict[str, Any]:
    """How the samples were chosen (the same for every family)."""
    return {
        "train_fraction": cfg.train.train_fraction,
        "valid_fraction": cfg.train.valid_fraction,
        "embargo_bars": cfg.labels.embargo_bars,
        "horizon_bars": cfg.labels.horizon_bars,
    }


def tree_params(family: str, cfg: Config) -> dict[str, Any]:
    """Everything needed to retrain the same model from the same bars."""
    # The module's version: the xgboost-cpu distribution installs the `xgboost` module.
    lib_version = str(getattr(importlib.import_module(family), "__version__", ""))
    return {**trees.params_for(family, cfg), "library_version": lib_version,
            **split_params(cfg)}


def train_export(family: str, ds: Dataset, cfg: Config,
                 cache: dict[str, Any] | None = None) -> Trained:
    """Fit, export (parity-gated) and score `family` via its ONNX graph."""
    if family in nets_train.FAMILIES:
        net = nets_train.train_and_export(family, ds, cfg, cache)
        return Trained(
            family=family, onnx_bytes=net.onnx_bytes, proba=net.proba_valid,
            parity_max_abs_diff=net.parity_max_abs_diff, parity_rows=net.parity_rows,
            probe_inputs=net.probe_inputs, probe_outputs=net.probe_outputs,
            train_seconds=net.train_seconds, export_seconds=net.export_seconds,
            input_kind="window", input_name=nets_train.INPUT_NAME,
            output_name=nets_train.OUTPUT_NAME, data_end=net.data_end,
            params={**net.params, **split_params(cfg)}, extra_metrics=net.extra_metrics)
    valid = ds.valid
    t0 = time.monotonic()
    model = trees.train(family, ds, cfg)
    train_s = time.monotonic() - t0
    log.info("trained %s in %.1f s", family, train_s)
    t0 = time.monotonic()
    exp = export_mod.export(model, valid.X)
    export_s = time.monotonic() - t0
    # Metrics come from the ONNX graph: they describe exactly what the daemon will serve.
    proba = export_mod.ort_proba(exp.onnx_bytes, valid.X)
    return Trained(
        family=family, onnx_bytes=exp.onnx_bytes, proba=proba,
        parity_max_abs_diff=exp.parity_max_abs_diff, parity_rows=exp.parity_rows,
        probe_inputs=exp.probe_inputs, probe_outputs=exp.probe_outputs,
        train_seconds=train_s, export_seconds=export_s, input_kind="features",
        input_name=export_mod.INPUT_NAME, output_name=export_mod.OUTPUT_NAME,
        data_end=ds.data_end, params=tree_params(family, cfg))


def train_task(family: str, shared: tuple[Dataset, Config]) -> Trained:
    """A Ray task: one family on the shared (dataset, config)."""
    ds, cfg = shared
    return train_export(family, ds, cfg)


def open_cluster(cfg: Config) -> RayExecutor | None:
    """The Ray executor `learning.executor` asks for, or None (train locally).

    Unreachable: one log line, then `learning.fallback`: local (None) or skip
    (ClusterSkipped).
    """
    lc = cfg.learning
    if lc.executor != "ray":
        return None
    try:
        ex = open_executor("ray", lc.ray_address)
    except ClusterUnavailable as exc:
        if lc.fallback == "skip":
            log.warning("ray unreachable: %s: skipping the job (learning.fallback = skip)",
                        exc)
            raise ClusterSkipped(f"ray unreachable: {exc} (learning.fallback = skip)"
                                 ) from None
        log.warning("ray unreachable: %s: falling back to local (learning.fallback = local)",
                    exc)
        return None
    assert isinstance(ex, RayExecutor)
    return ex


def task_timeout(budget_s: float, elapsed_s: float) -> float:
    """A Ray task's timeout inside a process budget (the learner's `job_timeout_s`, or
    `train.timeout_s` of `qtraderd train`): it ends first, so a task past its time is
    cancelled on the cluster by this driver rather than orphaned by its SIGKILL."""
    return max(1.0, (budget_s - elapsed_s) * 0.9 - 5.0)


def resources(cfg: Config, family: str) -> tuple[float, float]:
    """(CPUs, GPUs) one family's task asks the cluster for."""
    lc = cfg.learning
    pick = lambda t: float(t.get(family.upper(), t.get("*", 0.0)))  # noqa: E731
    return pick(lc.ray_cpus), pick(lc.ray_gpus)


def run_families(ex: RayExecutor, families: list[str], ds: Dataset, cfg: Config, *,
                 timeout_s: float | None) -> Iterator[tuple[str, Trained | BaseException]]:
    """Train `families` as Ray tasks in parallel (the dataset shipped once), yielding
    (family, Trained or the task's exception) as each finishes. Each family is its own
    `map` (its own resources); a timeout cancels every unfinished task on the cluster."""
    fn = train_task  # looked up per call: a test driver may wrap it (fault injection)
    t0 = time.monotonic()
    size = len(pickle.dumps((ds, cfg), protocol=5))  # what the object store holds once
    ref = ex.share((ds, cfg))
    log.info("ray: dataset shipped to %s in %.1f s (%.1f MB); %d task(s): %s", ex.address,
             time.monotonic() - t0, size / 1e6, len(families), ", ".join(families))
    where = f"ray:{ex.address}"

    def one(family: str) -> Trained:
        cpus, gpus = resources(cfg, family)
        for _, got in ex.map(fn, [family], shared=ref, cpus=cpus, gpus=gpus,
                             max_retries=cfg.learning.ray_max_retries, timeout_s=timeout_s):
            got.trained_on = where
            return got
        raise RuntimeError(f"ray returned no result for {family}")

    # One waiting thread per family (each its own resources): all tasks run at once on the
    # cluster, results come back in completion order.
    with ThreadPoolExecutor(max_workers=len(families) or 1) as pool:
        futures = {pool.submit(one, f): f for f in families}
        for fut in as_completed(futures):
            exc = fut.exception()
            yield futures[fut], (exc if exc is not None else fut.result())
