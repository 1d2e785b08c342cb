"""Classify new images with a trained checkpoint and a folder of labelled support images.

The support folder holds one subfolder per class with a few images each; every image (support
and query) goes through the cache's own resize / centre-crop and normalisation. The result
has one row per (image, class): the distance D(q, c), its rank, and each feature subspace's
share of it (per_subspace / total), so a user can see which subspaces drove a decision.
With ``explain_dir``, each query also gets ``<explain_dir>/<NNNN>_<stem>.png``: the image and
one evidence map per subspace for its predicted class against the runner-up
(``subspace_fsl.explain.maps``; exact for the built-in backbones and heads).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from subspace_fsl.engine.evaluate import load_model
from subspace_fsl.engine.model import FewShotModel, check_head_episode, mirrored
from subspace_fsl.runtime import Runtime, configure, no_grad_eval, to_input

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_paths(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders expanded (recursively) to their image files, sorted."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"--images folder {path} holds no image files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"--images {path} does not exist")
    if not paths:
        raise ValueError("no images to classify")
    return paths


def load_files(
    paths: list[Path], dataset: Mapping[str, Any], runtime: Runtime
) -> tuple[np.ndarray, torch.Tensor]:
    """(uint8 [n, 3, H, W], normalised float images on the device), as the cache does it."""
    from subspace_fsl.data.episodes import EpisodeLoader
    from subspace_fsl.data.images import load_image

    batch = np.stack([load_image(p, dataset["image_size"], dataset["resize"]) for p in paths])
    # the loader holds the cache's normalisation; here it normalises decoded files
    loader = EpisodeLoader(SimpleNamespace(images=batch), runtime.device, augment="none")
    return batch, loader.load(np.arange(len(batch)))


def embed_files(
    model: FewShotModel,
    paths: list[Path],
    dataset: Mapping[str, Any],
    batch_size: int,
    runtime: Runtime,
    mirror: bool = False,
) -> torch.Tensor:
    """Features of image files, preprocessed exactly as the image cache does (of their
    horizontal mirror images with ``mirror``)."""
    chunks = []
    with no_grad_eval(model):
        for start in range(0, len(paths), batch_size):
            _, images = load_files(paths[start : start + batch_size], dataset, runtime)
            if mirror:
                images = mirrored(images)
            with runtime.autocast():
                chunks.append(model.backbone(to_input(images, runtime)).float())
    return torch.cat(chunks)


def explain_files(
    model: FewShotModel,
    support_paths: list[Path],
    support_features: torch.Tensor,
    labels: torch.Tensor,
    queries: list[Path],
    class_names: list[str],
    dataset: Mapping[str, Any],
    batch_size: int,
    runtime: Runtime,
    out_dir: Path,
) -> list[Path]:
    """One PNG per query: the image and its S evidence maps (predicted vs runner-up)."""
    from subspace_fsl.explain.maps import evidence_maps, exact_supported
    from subspace_fsl.explain.plots import save_query_figure

    support_images = None
    if exact_supported(model) is not None:  # the gradient fallback needs the support images
        support_images = load_files(support_paths, dataset, runtime)[1]
        if len(support_features) == 2 * len(support_paths):  # model.flip_support
            support_images = torch.cat([support_images, mirrored(support_images)])
    written = []
    model.eval()
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        pixels, images = load_files(chunk, dataset, runtime)
        result = evidence_maps(
            model, support_images, labels, images, support_features=support_features
        )
        evidence = result.evidence.float().cpu().numpy()
        shares = result.per_subspace.float().cpu()
        for i, path in enumerate(chunk):
            c1, c2 = int(result.predicted[i]), int(result.runner_up[i])
            share = shares[:, i, c1] / shares[:, i, c1].sum().clamp_min(1e-30)
            title = (
                f"{path.name}: {class_names[c1]} (vs {class_names[c2]})"
                f"{'' if result.exact else ' [gradient x activation]'}"
            )
            labels_s = [f"s{s + 1} share {float(v):.2f}" for s, v in enumerate(share)]
            name = f"{start + i + 1:04d}_{path.stem}.png"
            written.append(save_query_figure(pixels[i], evidence[i], title, out_dir / name,
                                             labels_s))
    return written


def resolve_checkpoint(
    checkpoint: str | os.PathLike[str] | None, model_uri: str | None, cfg: Mapping[str, Any]
) -> Path:
    """``--checkpoint`` as given, or the checkpoint inside the MLflow model ``--model``
    (``runs:/<run id>/model``; the store is the settings' tracking URI)."""
    if model_uri is None:
        return Path(checkpoint)  # type: ignore[arg-type]
    from mlflow.exceptions import MlflowException

    from subspace_fsl.config import ConfigError
    from subspace_fsl.mlflow_model import checkpoint_of
    from subspace_fsl.tracking import tracking_uri

    uri = tracking_uri(cfg)
    try:
        return checkpoint_of(model_uri, uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model {model_uri}: not found in {uri} ({first})") from None


def predict(
    checkpoint: str | os.PathLike[str],
    support_dir: str | os.PathLike[str],
    images: Iterable[str | os.PathLike[str]],
    cfg: Mapping[str, Any] | None = None,
    explain_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Predict the class of each image; one row per (image, class), the predicted class first.

    ``cfg`` supplies the runtime section and ``eval.batch_size`` (default: the schema's).
    Columns: image, predicted, class, rank, distance, share_s1 .. share_sS. With
    ``explain_dir``, one evidence-map PNG per query is written there (module docstring).
    """
    from subspace_fsl.config import load_config
    from subspace_fsl.data.folder import read_folder

    cfg = cfg if cfg is not None else load_config()
    runtime = configure(cfg)
    model, state = load_model(checkpoint, runtime)
    support = read_folder(support_dir).sort_values(["class_id", "path"]).reset_index(drop=True)
    if support.empty:
        raise FileNotFoundError(
            f"--support folder {support_dir} holds no class subfolders with images"
        )
    counts = support.groupby("class_name", sort=False).size()
    if counts.nunique() != 1:
        listing = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise ValueError(
            f"--support {support_dir}: every class needs the same number of images ({listing})"
        )
    way, shot = len(counts), int(counts.iloc[0])
    if way < 2:
        raise ValueError(f"--support {support_dir} holds {way} class; at least 2 are needed")
    check_head_episode(
        model,
        way,
        shot,
        f"--support {support_dir} ({way} classes x {shot} images)",
        state["config"]["model"],
    )
    class_names = list(counts.index)
    label_of = {name: i for i, name in enumerate(class_names)}
    queries = image_paths(images)

    dataset = state["config"]["dataset"]
    batch = cfg["eval"]["batch_size"]
    support_features = embed_files(
        model, [Path(p) for p in support["path"]], dataset, batch, runtime
    )
    query_features = embed_files(model, queries, dataset, batch, runtime)
    labels = torch.as_tensor([label_of[n] for n in support["class_name"]], device=runtime.device)
    if model.flips(shot):  # model.flip_support: the mirror images join the support set
        mirror_features = embed_files(
            model, [Path(p) for p in support["path"]], dataset, batch, runtime, mirror=True
        )
        support_features = torch.cat([support_features, mirror_features])
        labels = torch.cat([labels, labels])
    with no_grad_eval(model):
        out = model.head(support_features, labels, query_features)
    distances = out.distances.float().cpu().numpy()  # [Q, N]
    per_subspace = out.per_subspace.float().cpu().numpy()  # [S, Q, N]
    if explain_dir is not None:
        import matplotlib

        matplotlib.use("Agg")
        written = explain_files(
            model, [Path(p) for p in support["path"]], support_features, labels, queries,
            class_names, dataset, batch, runtime, Path(explain_dir),
        )
        log.info("wrote %d evidence-map figures to %s", len(written), explain_dir)
    totals = per_subspace.sum(axis=0)
    shares = np.divide(
        per_subspace, totals, out=np.full_like(per_subspace, np.nan), where=totals > 0
    )

    rows = []
    for q, path in enumerate(queries):
        order = np.argsort(distances[q], kind="stable")
        predicted = class_names[order[0]]
        for rank, c in enumerate(order, start=1):
            row: dict[str, Any] = {
                "image": str(path),
                "predicted": predicted,
                "class": class_names[c],
                "rank": rank,
                "distance": float(distances[q, c]),
            }
            row.update({f"share_s{s + 1}": float(shares[s, q, c]) for s in range(shares.shape[0])})
            rows.append(row)
    return pd.DataFrame(rows)


def format_predictions(table: pd.DataFrame) -> str:
    """One line per image: predicted class, its distance, and the runner-up."""
    lines = []
    for image, rows in table.groupby("image", sort=False):
        best = rows.iloc[0]
        shares = "/".join(f"{best[c]:.2f}" for c in rows.columns if c.startswith("share_s"))
        line = f"{image}: {best['predicted']} (distance {best['distance']:.4g}, shares {shares})"
        if len(rows) > 1:
            second = rows.iloc[1]
            line += f"; next {second['class']} ({second['distance']:.4g})"
        lines.append(line)
    return "\n".join(lines)
