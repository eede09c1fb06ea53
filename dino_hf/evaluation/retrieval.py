"""Image retrieval with global DINO features and the revisited Oxford/Paris protocol (the reference's
`eval_image_retrieval.py`).

Each image gives its final-LayerNorm [CLS] token, at one scale or averaged over the reference's three scales (1,
1/sqrt(2), 1/2 of the input size), then L2-normalised; the database is ranked by cosine similarity to each query.
Average precision is the revisited protocol's (Radenović et al. 2018, the reference's `compute_ap`/`compute_map`):
trapezoidal AP over the ranks of the positives, after removing the *junk* images from the ranking. The three
protocols differ in what counts as positive and what as junk:

| protocol | positives | junk (ignored) |
|---|---|---|
| Easy | easy | junk, hard |
| Medium | easy, hard | junk |
| Hard | hard | junk, easy |

Two dataset layouts are read (see `docs/retrieval.md`):

- the published revisited layout, `<root>/<name>/jpg/*.jpg` and `<root>/<name>/gnd_<name>.pkl` (a pickle, so it is
  read only with `allow_unpickling=True`);
- a plain layout with no pickle: `<root>/queries/`, `<root>/database/` and `<root>/ground_truth.json`, which maps each
  query file name to `{"easy": [database file names], "hard": [...], "junk": [...]}` ("hard" and "junk" optional).

Example:

```python
>>> import numpy as np
>>> from dino_hf.evaluation.retrieval import compute_map
>>> ranks = np.array([[3, 0, 1, 2]])  # query 0's database order, best first
>>> round(compute_map(ranks, [{"ok": [0, 2], "junk": [3]}])[0], 4)  # junk 3 removed: positives at ranks 0, 2
0.7917
```
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, to_pixel_values
from ..modeling_dino import DinoViTModel
from .backbones import dino_feature, is_resnet
from .image_files import crop_to_patches, list_images, load_rgb


REFERENCE_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)
PROTOCOLS = ("easy", "medium", "hard")
REVISITED_DATASETS = ("roxford5k", "rparis6k")


@torch.no_grad()
def global_features(model: DinoViTModel, pixel_values: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """L2-normalised [CLS] features, averaged over input scales (the reference's `multi_scale` for several).

    Each scale `s != 1` resizes the input bilinearly by `s` (the reference's `interpolate(scale_factor=s)`); rows and
    columns that do not fill a whole patch are dropped, as the reference's patch convolution drops them.

    Args:
        model: the backbone.
        pixel_values: `(B, 3, H, W)` normalised images.
        scales: input scales; `REFERENCE_SCALES` for the reference's multi-scale features.

    Returns:
        `(B, D)` float32 unit vectors.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                 num_attention_heads=4)).eval()
    >>> features = global_features(model, torch.randn(2, 3, 64, 48), REFERENCE_SCALES)
    >>> features.shape, torch.allclose(features.norm(dim=-1), torch.ones(2))  # unit vectors (float32 rounding aside)
    (torch.Size([2, 64]), True)
    ```
    """
    total = None
    for scale in scales:
        inputs = pixel_values
        if scale != 1:
            inputs = F.interpolate(pixel_values, scale_factor=scale, mode="bilinear", align_corners=False)
        if not is_resnet(model):  # a ViT's patch convolution takes whole patches only; a ResNet any size
            inputs = crop_to_patches(inputs, model.config.patch_size)
        cls = dino_feature(model, inputs).float()
        total = cls if total is None else total + cls
    return F.normalize(total / len(scales), dim=-1)


def compute_ap(ranks: Sequence[int] | np.ndarray, num_positives: int) -> float:
    """Average precision from the sorted 0-based ranks of the retrieved positives (trapezoidal rule).

    Each positive found at rank `r` as the `j`-th positive (0-based) adds a trapezoid of width `1 / num_positives`
    between precisions `j / r` (1 at `r = 0`) and `(j + 1) / (r + 1)`. Positives never retrieved add nothing. This is
    the revisited-Oxford `compute_ap` and the Holidays/Copydays `score_ap_from_ranks_1` of the reference.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    found = np.arange(len(ranks), dtype=np.float64)
    precision_before = np.where(ranks == 0, 1.0, found / np.maximum(ranks, 1.0))
    precision_after = (found + 1.0) / (ranks + 1.0)
    return float(((precision_before + precision_after) / 2.0).sum() / num_positives)


def compute_map(
    ranks: np.ndarray, ground_truth: Sequence[dict], kappas: Sequence[int] = ()
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean average precision and mean precision at `kappas`, junk images removed (the reference's `compute_map`).

    Args:
        ranks: `(num_queries, num_database)`: row `i` lists database indices, best first, for query `i` (the
            reference passes the transpose, `(num_database, num_queries)`).
        ground_truth: per query, `{"ok": positive indices, "junk": ignored indices}`. Queries with no positive get
            NaN and do not count in the means.
        kappas: the `k` of precision@k; as the reference, `k` is capped at the rank of the last positive.

    Returns:
        `(mAP, per-query APs, mean precision@k per kappa, per-query precision@k)`.
    """
    ranks = np.asarray(ranks)
    aps = np.full(len(ground_truth), np.nan)
    precisions = np.full((len(ground_truth), len(kappas)), np.nan)
    for query, gnd in enumerate(ground_truth):
        positives = np.asarray(gnd["ok"])
        if positives.size == 0:
            continue
        positions = np.flatnonzero(np.isin(ranks[query], positives))
        junk = np.flatnonzero(np.isin(ranks[query], np.asarray(gnd.get("junk", []))))
        # Every junk image ranked before a positive moves it up one place.
        positions = positions - np.searchsorted(junk, positions)
        aps[query] = compute_ap(positions, positives.size)
        for j, kappa in enumerate(kappas):
            cutoff = min(int(positions.max()) + 1, kappa) if positions.size else kappa
            precisions[query, j] = (positions + 1 <= cutoff).sum() / cutoff
    valid = ~np.isnan(aps)
    mean_ap = float(aps[valid].mean()) if valid.any() else float("nan")
    mean_precisions = precisions[valid].mean(axis=0) if valid.any() else np.full(len(kappas), np.nan)
    return mean_ap, aps, mean_precisions, precisions


def protocol_ground_truth(ground_truth: Sequence[dict], protocol: str) -> list[dict]:
    """The revisited `{"easy", "hard", "junk"}` lists -> `{"ok", "junk"}` for the Easy, Medium or Hard protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    positives = {"easy": ("easy",), "medium": ("easy", "hard"), "hard": ("hard",)}[protocol]
    ignored = {"easy": ("junk", "hard"), "medium": ("junk",), "hard": ("junk", "easy")}[protocol]

    def gather(gnd: dict, keys: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([np.asarray(gnd.get(key, []), dtype=np.int64) for key in keys])

    return [{"ok": gather(gnd, positives), "junk": gather(gnd, ignored)} for gnd in ground_truth]


@dataclass
class RetrievalResult:
    """mAP and mean precision@k (fractions in [0, 1]) per protocol, and the ranking they were computed from."""

    mean_ap: dict[str, float]
    mean_precision_at: dict[str, dict[int, float]]
    ranks: np.ndarray = field(repr=False)

    def summary(self) -> str:
        lines = []
        for protocol, value in self.mean_ap.items():
            at_k = ", ".join(f"mP@{k} {100 * p:.2f}" for k, p in self.mean_precision_at[protocol].items())
            lines.append(f"{protocol:>6}: mAP {100 * value:.2f}  {at_k}")
        return "\n".join(lines)


def evaluate_retrieval(
    query_features: torch.Tensor,
    database_features: torch.Tensor,
    ground_truth: Sequence[dict],
    protocols: Sequence[str] = PROTOCOLS,
    kappas: Sequence[int] = (1, 5, 10),
) -> RetrievalResult:
    """Rank the database by cosine similarity to each query and score every protocol.

    Args:
        query_features: `(Q, D)`; database_features: `(N, D)` (normalised here).
        ground_truth: per query, `{"easy", "hard", "junk"}` lists of database indices.
    """
    if len(ground_truth) != len(query_features):
        raise ValueError(f"{len(ground_truth)} ground-truth entries for {len(query_features)} queries.")
    with torch.autocast(query_features.device.type, enabled=False):  # ranks from float32 cosines
        similarity = F.normalize(query_features.float(), dim=-1) @ F.normalize(database_features.float(), dim=-1).T
    ranks = torch.argsort(similarity, dim=1, descending=True).cpu().numpy()
    mean_ap, at_k = {}, {}
    for protocol in protocols:
        value, _, precisions, _ = compute_map(ranks, protocol_ground_truth(ground_truth, protocol), kappas)
        mean_ap[protocol] = value
        at_k[protocol] = {int(k): float(p) for k, p in zip(kappas, precisions)}
    return RetrievalResult(mean_ap, at_k, ranks)


@dataclass
class RetrievalDataset:
    """Query and database image files, per-query ground truth (database indices), optional query boxes."""

    query_paths: list[Path]
    database_paths: list[Path]
    ground_truth: list[dict[str, np.ndarray]]
    query_boxes: list[tuple[float, float, float, float]] | None = None


def load_revisited_dataset(root: str | Path, name: str, allow_unpickling: bool = False) -> RetrievalDataset:
    """The published revisited Oxford/Paris layout: `<root>/<name>/jpg/` and `<root>/<name>/gnd_<name>.pkl`.

    The ground truth is a pickle, which can run code when loaded: it is read only with `allow_unpickling=True`.
    """
    folder = Path(root) / name
    gnd_file = folder / f"gnd_{name}.pkl"
    if not gnd_file.is_file():
        raise FileNotFoundError(f"No ground-truth file {gnd_file}.")
    if not allow_unpickling:
        raise ValueError(
            f"{gnd_file} is a pickle and unpickling can execute arbitrary code; pass allow_unpickling=True "
            "(--allow_unpickling) if you trust it, or convert it to the JSON layout (docs/retrieval.md)."
        )
    with open(gnd_file, "rb") as handle:
        cfg = pickle.load(handle)
    images = folder / "jpg"
    gnd = cfg["gnd"]
    return RetrievalDataset(
        query_paths=[images / f"{stem}.jpg" for stem in cfg["qimlist"]],
        database_paths=[images / f"{stem}.jpg" for stem in cfg["imlist"]],
        ground_truth=[
            {key: np.asarray(g.get(key, []), dtype=np.int64) for key in ("easy", "hard", "junk")} for g in gnd
        ],
        query_boxes=[tuple(g["bbx"]) for g in gnd] if all("bbx" in g for g in gnd) else None,
    )


def load_json_dataset(root: str | Path) -> RetrievalDataset:
    """The plain layout: `<root>/queries/`, `<root>/database/`, `<root>/ground_truth.json` (no pickle).

    `ground_truth.json` maps each query's file name (in `queries/`) to `{"easy": [...], "hard": [...],
    "junk": [...]}`, lists of file names in `database/`; "hard" and "junk" may be omitted. The queries are the keys,
    in file order; the database is every image in `database/`, sorted by name.
    """
    root = Path(root)
    entries = json.loads((root / "ground_truth.json").read_text())
    database = list_images(root / "database")
    index = {path.name: i for i, path in enumerate(database)}
    ground_truth = []
    for query, lists in entries.items():
        if not (root / "queries" / query).is_file():
            raise FileNotFoundError(f"ground_truth.json names query {query!r}, not found in {root / 'queries'}.")
        unknown = [name for key in ("easy", "hard", "junk") for name in lists.get(key, []) if name not in index]
        if unknown:
            raise ValueError(f"Query {query!r} lists images not in {root / 'database'}: {unknown[:5]}.")
        ground_truth.append(
            {
                key: np.asarray([index[n] for n in lists.get(key, [])], dtype=np.int64)
                for key in ("easy", "hard", "junk")
            }
        )
    return RetrievalDataset([root / "queries" / q for q in entries], database, ground_truth)


def load_retrieval_dataset(
    root: str | Path, name: str | None = None, allow_unpickling: bool = False
) -> RetrievalDataset:
    """`load_json_dataset(root)` when `root/ground_truth.json` exists, else the revisited layout `name`."""
    if (Path(root) / "ground_truth.json").is_file():
        return load_json_dataset(root)
    if name is None:
        raise ValueError(f"{root} has no ground_truth.json; name the revisited dataset ({REVISITED_DATASETS}).")
    return load_revisited_dataset(root, name, allow_unpickling)


@torch.no_grad()
def extract_global_features(
    model: DinoViTModel,
    paths: Sequence[str | Path],
    image_size: int | None = 224,
    scales: Sequence[float] = (1.0,),
    boxes: Sequence[tuple[float, float, float, float]] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """`(len(paths), D)` [`global_features`] of image files, one image at a time, as the reference.

    Each image is optionally cropped to its box `(x0, y0, x1, y1)`, then shrunk to fit in `image_size x image_size`
    (aspect ratio kept, Lanczos; `Image.thumbnail`, so smaller images stay as they are), as the reference's `--imsize`.
    """
    features = []
    for i, path in enumerate(tqdm(paths, desc="features", leave=False)):
        image = load_rgb(path)
        if boxes is not None:
            image = image.crop(tuple(round(v) for v in boxes[i]))
        if image_size is not None:
            image.thumbnail((image_size, image_size), Image.Resampling.LANCZOS)
        pixel_values = to_pixel_values(image, mean, std).to(device)
        features.append(global_features(model, pixel_values, scales).cpu())
    return torch.cat(features)


def evaluate_retrieval_dataset(
    model: DinoViTModel,
    dataset: RetrievalDataset,
    image_size: int | None = 224,
    multiscale: bool = False,
    crop_queries: bool = False,
    **kwargs,
) -> RetrievalResult:
    """Features of the queries and the database, then [`evaluate_retrieval`]; `kwargs` go to the extraction.

    As the reference, queries are whole images unless `crop_queries` (the revisited protocol's query boxes).
    """
    scales = REFERENCE_SCALES if multiscale else (1.0,)
    if crop_queries and dataset.query_boxes is None:
        raise ValueError("crop_queries needs query boxes, which only the revisited layout has.")
    boxes = dataset.query_boxes if crop_queries else None
    queries = extract_global_features(model, dataset.query_paths, image_size, scales, boxes=boxes, **kwargs)
    database = extract_global_features(model, dataset.database_paths, image_size, scales, **kwargs)
    return evaluate_retrieval(queries, database, dataset.ground_truth)


__all__ = [
    "PROTOCOLS",
    "REFERENCE_SCALES",
    "RetrievalDataset",
    "RetrievalResult",
    "compute_ap",
    "compute_map",
    "evaluate_retrieval",
    "evaluate_retrieval_dataset",
    "extract_global_features",
    "global_features",
    "load_json_dataset",
    "load_retrieval_dataset",
    "load_revisited_dataset",
    "protocol_ground_truth",
]
