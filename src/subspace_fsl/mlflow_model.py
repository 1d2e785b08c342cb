"""A trained checkpoint as an MLflow model (``mlflow.pyfunc``): backbone + head on one episode.

The model takes one few-shot episode and returns, for every query image, one score per class:

- input (a dict of arrays, checked against a ``TensorSpec`` signature):
  ``support_images`` uint8 ``[N*K, 3, H, W]``, RGB as the image cache stores it (resized and
  centre-cropped to ``dataset.image_size``; the model applies the cache's normalisation);
  ``support_labels`` int64 ``[N*K]``, class ids 0..N-1 (every class the same number of shots);
  ``query_images`` uint8 ``[Q, 3, H, W]``;
- output: ``logits`` float32 ``[Q, N]`` = -D(q, c) / tau (the argmax is the predicted class;
  D is the summed subspace distance of method.md step 3).

``log_model`` stores ``best.pt`` as the model's artifact. The logged model is named after what
it is, ``{method}-{run folder}`` (:func:`model_name`; MLflow allows no ``.`` or ``/`` in it, so
``l1-0.1`` reads ``l1-0p1``); ``models:/<model id>`` loads it, and ``subspace-fsl predict
--model`` also reads ``runs:/<run id>/model`` (``checkpoint_of`` finds the run's model).
:func:`log_model_metrics` (the tables stage, once the evaluations ran) logs the run's novel and
validation metrics on the model, against its data set (name and cache digest), which the
model's page lists under "Datasets used".
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

try:  # the class must exist at import time for MLflow to pickle it by reference
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    PythonModel = object  # type: ignore[assignment,misc]

MODEL_NAME = "model"
#: the run's metrics a logged model carries (:func:`log_model_metrics`)
MODEL_METRIC_PREFIXES = ("novel_", "val_eval_", "best_val_acc")


def model_name(method: str, run_name: str) -> str:
    """The logged model's name: ``{method}-{run folder}`` with ``.`` as ``p``
    (``multisubspace-w5_k1_S4_l1-0p1_l2-0_anone_seed0``)."""
    return f"{method}-{run_name.split('/')[-1]}".replace(".", "p").replace("/", "-")
CHECKPOINT_ARTIFACT = "checkpoint"
INPUTS = ("support_images", "support_labels", "query_images")


def signature(image_size: int) -> Any:
    """Tensor signature of one episode (variable numbers of images, fixed image shape)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    shape = (-1, 3, int(image_size), int(image_size))
    return ModelSignature(
        inputs=Schema([
            TensorSpec(np.dtype(np.uint8), shape, "support_images"),
            TensorSpec(np.dtype(np.int64), (-1,), "support_labels"),
            TensorSpec(np.dtype(np.uint8), shape, "query_images"),
        ]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "logits")]),
    )


class FewShotPyfunc(PythonModel):
    """``mlflow.pyfunc`` wrapper of a checkpoint (loaded on CPU, in eval mode)."""

    # the TensorSpec signature given to log_model describes the input: MLflow is not to derive
    # a (list-based) one from predict's type hints (hence none there), nor warn about them
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from subspace_fsl.config import load_config
        from subspace_fsl.engine.evaluate import load_model
        from subspace_fsl.runtime import configure

        cfg = load_config(None, ["runtime.device=cpu", "runtime.malloc_tuning=false",
                                 "runtime.channels_last=false"])
        self.runtime = configure(cfg)
        self.model, state = load_model(context.artifacts[CHECKPOINT_ARTIFACT], self.runtime)
        self.model.eval()
        self.image_size = int(state["config"]["dataset"]["image_size"])

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """logits ``[Q, N]`` (np.float32) of the ``query_images`` against the support set;
        ``model_input`` is the dict of arrays the signature describes."""
        import torch

        from subspace_fsl.data.episodes import EpisodeLoader
        from subspace_fsl.runtime import no_grad_eval

        missing = [k for k in INPUTS if k not in model_input]
        if missing:
            raise ValueError(f"model input needs {', '.join(INPUTS)}; missing {missing}")
        support = np.asarray(model_input["support_images"], dtype=np.uint8)
        query = np.asarray(model_input["query_images"], dtype=np.uint8)
        labels = torch.as_tensor(np.asarray(model_input["support_labels"], dtype=np.int64))
        images = np.concatenate([support, query])
        loader = EpisodeLoader(SimpleNamespace(images=images), self.runtime.device)
        with no_grad_eval(self.model):
            batch = loader.load(np.arange(len(images)))
            out = self.model(batch[: len(support)], labels, batch[len(support):])
        return out.logits.float().cpu().numpy()


def log_best_model(tracker: Any, cfg: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """After training: ``best.pt`` as an MLflow pyfunc model (``model``), shown in the run's
    and the experiment's Models tab; nothing when tracking is off (a ``NullTracker``)."""
    from subspace_fsl.tracking import RunTracker

    if isinstance(tracker, RunTracker):
        log_model(tracker, cfg, Path(run_dir) / "best.pt")


def log_model(tracker: Any, cfg: Mapping[str, Any], checkpoint: str | os.PathLike[str]) -> Any:
    """Log ``checkpoint`` as the run's pyfunc model ``model`` (with its signature); returns
    MLflow's ``ModelInfo``. Requirements are given, not inferred (inference re-imports the
    model in a subprocess, seconds per run)."""
    import mlflow
    from mlflow.models import Model

    from subspace_fsl import __version__
    from subspace_fsl.tracking import METHOD_TAG, global_store, with_retry

    run = with_retry(tracker.client.get_run, tracker.run_id)
    method = run.data.tags.get(METHOD_TAG)
    name = model_name(method or "model", run.info.run_name or Path(checkpoint).parent.name)
    # created here, in the run's experiment (Model.log alone would file it under the global
    # "active" experiment, i.e. Default), with the run's params as MLflow does
    logged = with_retry(
        tracker.client.create_logged_model, run.info.experiment_id, name=name,
        source_run_id=tracker.run_id, params=dict(run.data.params),
        tags={**({METHOD_TAG: method} if method else {}), "run": str(run.info.run_name),
              "dataset": str(cfg["dataset"]["name"])},
    )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # the object is pickled by reference (its class lives in this package), and a TensorSpec
    # signature needs neither type hints nor an input example: MLflow's notes on those are noise
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with global_store(tracker.uri), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return Model.log(
                artifact_path=None, name=name, flavor=mlflow.pyfunc,
                run_id=tracker.run_id, model_id=logged.model_id, python_model=FewShotPyfunc(),
                artifacts={CHECKPOINT_ARTIFACT: str(Path(checkpoint).resolve())},
                signature=signature(cfg["dataset"]["image_size"]),
                pip_requirements=[f"subspace-fsl=={__version__}",
                                  f"mlflow=={mlflow.__version__}", "torch", "numpy"],
                metadata={"method": method, "checkpoint": Path(checkpoint).name},
            )
    finally:
        pyfunc_log.setLevel(level)


def run_model(client: Any, run_id: str) -> Any | None:
    """The logged model of the training run ``run_id`` (the latest), or None."""
    from subspace_fsl.tracking import with_retry

    run = with_retry(client.get_run, run_id)
    models = with_retry(client.search_logged_models, [run.info.experiment_id],
                        filter_string=f"source_run_id = '{run_id}'",
                        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    return models[0] if models else None


def log_model_metrics(client: Any, run_id: str) -> str | None:
    """The run's novel and validation metrics (:data:`MODEL_METRIC_PREFIXES`, their last
    values) on its logged model, against the run's data set input (name, digest); returns the
    model id (None: the run has no model)."""
    from mlflow.entities import Metric

    from subspace_fsl.tracking import with_retry

    model = run_model(client, run_id)
    if model is None:
        return None
    run = with_retry(client.get_run, run_id)
    inputs = run.inputs.dataset_inputs if run.inputs else []
    dataset = inputs[0].dataset if inputs else None
    metrics = [
        Metric(key, float(value), int(time.time() * 1000), 0, model_id=model.model_id,
               dataset_name=dataset.name if dataset else None,
               dataset_digest=dataset.digest if dataset else None, run_id=run_id)
        for key, value in sorted(run.data.metrics.items())
        if key.startswith(MODEL_METRIC_PREFIXES)
    ]
    if metrics:
        with_retry(client.log_batch, run_id, metrics=metrics)
    return model.model_id


def checkpoint_of(model_uri: str, tracking_uri: str) -> Path:
    """The ``best.pt`` inside a logged model (``models:/<model id>``, ``runs:/<id>/model``:
    the run's own logged model, whatever its name), fetched from the store into MLflow's
    download folder."""
    import mlflow

    from subspace_fsl.tracking import _client, global_store

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    match = re.fullmatch(r"runs:/([0-9a-f]+)/model/?", model_uri)
    if match:
        from mlflow.exceptions import MlflowException

        try:
            model = run_model(_client(tracking_uri), match.group(1))
        except MlflowException:
            model = None
        if model is not None:
            model_uri = f"models:/{model.model_id}"
    with global_store(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"--model {model_uri} holds no checkpoint (.pt) artifact")
    return found[0]
