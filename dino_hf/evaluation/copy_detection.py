"""Copy detection with DINO descriptors (the reference's `eval_copy_detection.py`, Copydays protocol).

The descriptor of an image (resized to `image_size x image_size`, 320 in the reference) is the final-LayerNorm [CLS]
token concatenated with the GeM-pooled (p = 4) patch tokens of the last block, `(B, 2D)`. Whitening is learned on a
separate image set (PCA with eigenvalues raised to -1/2), the descriptors are L2-normalised, and every query (a
transformed copy) searches the originals plus optional distractors. The score is the mean over queries of the
Holidays/Copydays average precision over the top-`k` (20) results, per block of copies.

Layout (see `docs/copy_detection.md`): a root folder with `original/` (the database) and any number of other folders,
at any depth, each holding transformed copies (one query block per folder, e.g. Copydays' `strong/`,
`jpegqual/10/`, `crops/50/`). A copy matches the originals with the same file stem, or whose stem it starts with
followed by `_` (`0001_rotated.jpg` -> `0001.jpg`); with `prefix_length=n`, those sharing its first `n` characters
(Copydays: 4). Distractor and whitening images are separate folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, to_pixel_values
from ..modeling_dino import DinoViTModel
from .backbones import global_and_local_features
from .image_files import list_images, load_rgb
from .retrieval import compute_ap


def gem(tokens: torch.Tensor, p: float = 4.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over tokens: `(mean_n clamp(x_n, eps)^p)^(1/p)`, `(B, N, D) -> (B, D)`.

    Example:

    ```python
    >>> import torch
    >>> gem(torch.tensor([[[1.0], [3.0]]]), p=4)  # ((1 + 81) / 2) ** 0.25
    tensor([[2.5304]])
    ```
    """
    return tokens.clamp(min=eps).pow(p).mean(dim=1).pow(1.0 / p)


@torch.no_grad()
def copy_detection_descriptor(model: DinoViTModel, pixel_values: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """`(B, 2D)` float32: the DINO feature and the GeM-pooled spatial features ([`global_and_local_features`]): a
    ViT's [CLS] token and last-block patch tokens (after the final LayerNorm), a ResNet's pooled last stage and its
    last feature map."""
    pooled, local = global_and_local_features(model, pixel_values)
    return torch.cat([pooled.float(), gem(local.flatten(1, 2).float(), p)], dim=1)


@torch.no_grad()
def extract_descriptors(
    model: DinoViTModel,
    paths: Sequence[str | Path],
    image_size: int = 320,
    batch_size: int = 16,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """`(len(paths), 2D)` descriptors of image files, each resized (bicubic) to `image_size x image_size`."""
    descriptors = []
    for start in tqdm(range(0, len(paths), batch_size), desc="descriptors", leave=False):
        batch = [
            to_pixel_values(load_rgb(path).resize((image_size, image_size), Image.Resampling.BICUBIC), mean, std)
            for path in paths[start : start + batch_size]
        ]
        descriptors.append(copy_detection_descriptor(model, torch.cat(batch).to(device)).cpu())
    return torch.cat(descriptors) if descriptors else torch.empty(0)


@dataclass
class PCAWhitening:
    """PCA whitening as the reference's `utils.PCA` (whit = 0.5) applied after centering.

    `fit` takes the eigen-decomposition of the second-moment matrix `X^T X / n` of the whitening features (the
    reference does not center them for this, only for the shift), floors the eigenvalues at `1e-5` of the largest,
    keeps the `dim` largest and scales each direction by `eigenvalue^-power`. `__call__` computes
    `(x - mean) @ projection.T`.
    """

    mean: torch.Tensor
    projection: torch.Tensor  # (dim, D)

    @classmethod
    def fit(cls, features: torch.Tensor, dim: int | None = None, power: float = 0.5) -> PCAWhitening:
        x = features.double().cpu().numpy()
        eigenvalues, eigenvectors = np.linalg.eigh(x.T @ x / x.shape[0])
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-5)
        order = np.argsort(eigenvalues)[::-1][: dim or x.shape[1]]
        projection = np.diag(eigenvalues[order] ** -power) @ eigenvectors[:, order].T
        return cls(features.float().mean(dim=0).cpu(), torch.from_numpy(projection).float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):  # eigenvalue^-1/2 amplifies rounding errors
            return (features.float() - self.mean.to(features.device)) @ self.projection.to(features.device).T


def match_originals(copy_names: Sequence[str], original_names: Sequence[str], prefix_length: int | None = None):
    """Per copy, the indices of the originals it is a copy of (see the module docstring for the rule)."""
    stems = [Path(name).stem for name in original_names]
    matches = []
    for name in copy_names:
        stem = Path(name).stem
        if prefix_length is not None:
            found = [i for i, s in enumerate(stems) if s[:prefix_length] == stem[:prefix_length]]
        else:
            found = [i for i, s in enumerate(stems) if stem == s or stem.startswith(s + "_")]
        matches.append(found)
    return matches


def copy_detection_map(
    queries: torch.Tensor, database: torch.Tensor, positives: Sequence[Sequence[int]], top_k: int = 20
) -> tuple[float, np.ndarray]:
    """Mean over queries of the AP of the `top_k` nearest database items (cosine), as the reference's `eval_result`.

    Positives beyond the `top_k` results count as not found. Returns `(mAP, per-query APs)`.
    """
    with torch.autocast(queries.device.type, enabled=False):  # ranks from float32 cosines
        similarity = F.normalize(queries.float(), dim=1) @ F.normalize(database.float(), dim=1).T
    nearest = similarity.topk(min(top_k, database.shape[0]), dim=1).indices.numpy()
    aps = np.array(
        [
            compute_ap(np.flatnonzero(np.isin(row, list(p))), len(p)) if p else np.nan
            for row, p in zip(nearest, positives)
        ]
    )
    return float(np.nanmean(aps)), aps


def query_blocks(root: str | Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Every folder under `root` holding images, except `original/` and `exclude`, sorted (the query blocks)."""
    root = Path(root)
    skipped = {(root / "original").resolve(), *(Path(p).resolve() for p in exclude)}
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()} - {root})
    return [f for f in folders if f.resolve() not in skipped and list_images(f)]


def evaluate_copy_detection(
    model: DinoViTModel,
    data_path: str | Path,
    distractors_path: str | Path | None = None,
    whitening_path: str | Path | None = None,
    prefix_length: int | None = None,
    top_k: int = 20,
    **kwargs,
) -> dict[str, float]:
    """mAP per query block (`"<block>"`) and over all queries (`"all"`), fractions in [0, 1].

    `kwargs` go to [`extract_descriptors`] (`image_size`, `batch_size`, `mean`, `std`, `device`).
    """
    data_path = Path(data_path)
    originals = list_images(data_path / "original")
    if not originals:
        raise FileNotFoundError(f"No images in {data_path / 'original'}.")
    database = [extract_descriptors(model, originals, **kwargs)]
    if distractors_path is not None:
        if not list_images(distractors_path):
            raise FileNotFoundError(f"No images in the distractors folder {distractors_path}.")
        database.append(extract_descriptors(model, list_images(distractors_path), **kwargs))
    database = torch.cat(database)
    blocks = query_blocks(data_path, [p for p in (distractors_path, whitening_path) if p is not None])
    if not blocks:
        raise ValueError(f"No folder of copies under {data_path} (besides original/).")
    block_queries = {block: extract_descriptors(model, list_images(block), **kwargs) for block in blocks}
    whitening = None
    if whitening_path is not None:
        whitening = PCAWhitening.fit(extract_descriptors(model, list_images(whitening_path), **kwargs))
        database = whitening(database)
    results, all_aps = {}, []
    for block, queries in block_queries.items():
        positives = match_originals([p.name for p in list_images(block)], [p.name for p in originals], prefix_length)
        unmatched = [p.name for p, m in zip(list_images(block), positives) if not m]
        if unmatched:
            raise ValueError(f"Copies in {block} match no original: {unmatched[:5]}.")
        value, aps = copy_detection_map(whitening(queries) if whitening else queries, database, positives, top_k)
        results[block.relative_to(data_path).as_posix()] = value
        all_aps.append(aps)
    results["all"] = float(np.nanmean(np.concatenate(all_aps)))
    return results


__all__ = [
    "PCAWhitening",
    "copy_detection_descriptor",
    "copy_detection_map",
    "evaluate_copy_detection",
    "extract_descriptors",
    "gem",
    "match_originals",
    "query_blocks",
]
