"""Feature extraction: pipeline-ready saved folders (the backbone with `dino_image_processor`), the backbone of any
saved folder, the linear-evaluation feature layouts, and batch extraction of features to a safetensors or parquet file.

After `import dino_hf`, a folder saved by [`save_model_with_processor`] works with transformers' pipeline:

```python
>>> import dino_hf  # registers the "dino" model type with AutoModel
>>> from transformers import pipeline
>>> extractor = pipeline("image-feature-extraction", model="dino-vits16")  # doctest: +SKIP
>>> feature = extractor(image, pool=True, return_tensors=True)  # (1, 384): the DINO feature  # doctest: +SKIP
```

`pool=True` returns the model's `pooler_output`, the final-LayerNorm [CLS] token (the DINO feature); without it the
pipeline returns `last_hidden_state`, all tokens `(1, 1 + num_patches, D)`. A ResNet's `pooler_output` is
`(1, C, 1, 1)` (transformers' `ResNetModel`); `pipeline_class=DinoFeatureExtractionPipeline` gives the DINO feature
of every backbone as a flat `(1, D)` vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.pipelines.image_feature_extraction import ImageFeatureExtractionPipeline

from ..hub import load_backbone  # the evaluations read any DINO backbone, ViT or ResNet
from ..image_processing_dino import dino_image_processor
from ..modeling_dino import DinoViTModel
from .backbones import default_image_size, dino_feature, is_resnet


def save_model_with_processor(
    model: DinoViTModel, path: str | Path, processor: BitImageProcessorPil | None = None
) -> Path:
    """Save a backbone and its image processor in one folder, ready for `pipeline("image-feature-extraction")`.

    Args:
        model: the backbone.
        path: the folder.
        processor: defaults to [`dino_image_processor`] at the model's `image_size`.
    """
    path = Path(path)
    model.save_pretrained(path)
    (processor or dino_image_processor(image_size=default_image_size(model))).save_pretrained(path)
    return path


class DinoFeatureExtractionPipeline(ImageFeatureExtractionPipeline):
    """transformers' `image-feature-extraction` pipeline whose pooled output (`pool=True`) is the DINO feature as a
    flat vector `(1, D)` for every backbone: a ResNet's `pooler_output` is `(1, C, 1, 1)`, flattened here.

    ```python
    >>> from transformers import pipeline
    >>> from dino_hf.evaluation import DinoFeatureExtractionPipeline
    >>> extractor = pipeline("image-feature-extraction", model="outputs/run/export",
    ...                      pipeline_class=DinoFeatureExtractionPipeline)  # doctest: +SKIP
    >>> extractor(image, pool=True, return_tensors=True).shape  # (1, D), ViT or ResNet  # doctest: +SKIP
    ```
    """

    def postprocess(self, model_outputs, pool=None, return_tensors=False):
        if pool and "pooler_output" in model_outputs and model_outputs["pooler_output"].dim() > 2:
            model_outputs["pooler_output"] = model_outputs["pooler_output"].flatten(1)
        return super().postprocess(model_outputs, pool=pool, return_tensors=return_tensors)


def extract_linear_features(
    model: DinoViTModel, pixel_values: torch.Tensor, n_last_blocks: int = 4, avgpool_patchtokens: bool = False
) -> torch.Tensor:
    """Linear-evaluation features in the reference's layout: [`DinoViTModel.get_linear_features`].

    The [CLS] tokens of the last `n_last_blocks` blocks (each through the final LayerNorm); with
    `avgpool_patchtokens` and one block (ViT-B), [CLS] and the averaged patch tokens interleaved as the reference
    does (`[cls_0, avg_0, cls_1, avg_1, ...]`), so its released ViT-B linear weights apply. Returns
    `(B, D * (n_last_blocks + avgpool_patchtokens))`; with `n_last_blocks=1` and no pooling this is the DINO feature,
    `model(pixel_values).pooler_output`. Gradients flow unless the caller disables them.

    A ResNet backbone (transformers' `ResNetModel`) has one linear-evaluation feature, as in the reference: its pooled
    last stage (`n_last_blocks=1`, no `avgpool_patchtokens`).
    """
    if is_resnet(model):
        if n_last_blocks != 1 or avgpool_patchtokens:
            raise ValueError(
                "A ResNet's feature is its pooled last stage: use n_last_blocks=1, avgpool_patchtokens=False."
            )
        return dino_feature(model, pixel_values)
    return model.get_linear_features(pixel_values, n_last_blocks, avgpool_patchtokens)


def unpack_batch(batch: Any) -> tuple[torch.Tensor, Any, Any]:
    """`(pixel_values, labels, ids)` of a batch: a tuple (labels and ids optional) or a mapping with `pixel_values` and
    optional `labels`/`label` and `ids`/`id`. Missing entries are `None`."""
    if isinstance(batch, Mapping):
        labels = batch["labels"] if "labels" in batch else batch.get("label")
        return batch["pixel_values"], labels, batch["ids"] if "ids" in batch else batch.get("id")
    batch = tuple(batch)
    return batch[0], batch[1] if len(batch) > 1 else None, batch[2] if len(batch) > 2 else None


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, torch.Tensor):
        return values.tolist()
    return list(values)


@torch.no_grad()
def extract_features(
    model: DinoViTModel,
    batches: Iterable[Any],
    output_path: str | Path | None = None,
    *,
    n_last_blocks: int = 1,
    avgpool_patchtokens: bool = False,
    normalize: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Features of every batch, optionally written to a `.safetensors` or `.parquet` file.

    The default feature is the DINO feature (the final-LayerNorm [CLS] token, `pooler_output`), what k-NN evaluation
    and retrieval use; `n_last_blocks`/`avgpool_patchtokens` give the linear-evaluation layouts (see
    [`extract_linear_features`]).

    Args:
        model: the backbone (put in eval mode; moved to `device` when given).
        batches: `(pixel_values, labels, ids)` tuples (labels and ids optional), or mappings with `pixel_values` and
            optional `labels`/`label` and `ids`/`id`. Labels are integers; ids integers or strings.
        output_path: `*.safetensors` (tensors `features` float32 `(N, D)`, `labels` int64 `(N,)`, `ids` int64 `(N,)`;
            integer ids only) or `*.parquet` (columns `id`, `label`, `feature` as a fixed-size list of float32; any
            ids). `None` writes nothing.
        normalize: L2-normalise each feature.
        device: where to run the model; defaults to the model's device.
        progress: show a tqdm progress bar (`total` batches, default `len(batches)` when it exists).

    Returns:
        `{"features": (N, D) float32 tensor, "labels": (N,) int64 tensor or None, "ids": list or None}`.

    Example:

    ```python
    >>> import tempfile
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> from dino_hf.evaluation import extract_features, load_features
    >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                 num_attention_heads=4))
    >>> batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), torch.arange(4) + 4 * i) for i in range(2)]
    >>> path = f"{tempfile.mkdtemp()}/features.safetensors"
    >>> out = extract_features(model, batches, path, progress=False)
    >>> out["features"].shape, load_features(path)["ids"].tolist()
    (torch.Size([8, 64]), [0, 1, 2, 3, 4, 5, 6, 7])
    ```
    """
    model = model.eval() if device is None else model.to(device).eval()
    device = next(model.parameters()).device
    features, labels, ids = [], [], []
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    for batch in tqdm(batches, total=total, disable=not progress, desc="Extracting features", unit="batch"):
        pixel_values, batch_labels, batch_ids = unpack_batch(batch)
        output = extract_linear_features(model, pixel_values.to(device), n_last_blocks, avgpool_patchtokens).float()
        if normalize:
            output = torch.nn.functional.normalize(output, dim=1)
        features.append(output.cpu())
        if batch_labels is not None:
            labels.extend(_as_list(batch_labels))
        if batch_ids is not None:
            ids.extend(_as_list(batch_ids))
    if not features:
        raise ValueError("No batches to extract features from.")
    all_features = torch.cat(features)
    for name, values in (("labels", labels), ("ids", ids)):
        if values and len(values) != all_features.shape[0]:
            raise ValueError(
                f"Got {len(values)} {name} for {all_features.shape[0]} images: give them for every batch."
            )
    result = {
        "features": all_features,
        "labels": torch.tensor(labels, dtype=torch.long) if labels else None,
        "ids": ids or None,
    }
    if output_path is not None:
        save_features(result, output_path)
    return result


def save_features(features: dict[str, Any], path: str | Path) -> Path:
    """Write `{"features", "labels", "ids"}` (as [`extract_features`] returns) to `.safetensors` or `.parquet`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix: torch.Tensor = features["features"]
    labels, ids = features.get("labels"), features.get("ids")
    if path.suffix == ".safetensors":
        tensors = {"features": matrix.contiguous()}
        if labels is not None:
            tensors["labels"] = torch.as_tensor(labels, dtype=torch.long)
        if ids is not None:
            if not all(isinstance(i, (int, np.integer)) for i in ids):
                raise ValueError("safetensors holds integer ids only; write string ids to a .parquet file.")
            tensors["ids"] = torch.as_tensor(ids, dtype=torch.long)
        save_file(tensors, path, metadata={"format": "pt", "dim": str(matrix.shape[1])})
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(matrix.numpy().reshape(-1), type=pa.float32())
        columns = {"feature": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])}
        if labels is not None:
            columns["label"] = pa.array(torch.as_tensor(labels).tolist(), type=pa.int64())
        if ids is not None:
            columns["id"] = pa.array(list(ids))
        pq.write_table(pa.table(columns), path)
    else:
        raise ValueError(f"Unknown features file type {path.suffix!r}: use .safetensors or .parquet.")
    return path


def load_features(path: str | Path) -> dict[str, Any]:
    """Read a file written by [`extract_features`] / [`save_features`] back to `{"features", "labels", "ids"}`.

    `ids` is an int64 tensor for safetensors files and a list for parquet files.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        return {"features": tensors["features"], "labels": tensors.get("labels"), "ids": tensors.get("ids")}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = table.column("feature").combine_chunks()
        dim = column.type.list_size
        matrix = torch.from_numpy(column.flatten().to_numpy().reshape(-1, dim).copy())
        names = table.column_names
        return {
            "features": matrix,
            "labels": torch.tensor(table.column("label").to_pylist()) if "label" in names else None,
            "ids": table.column("id").to_pylist() if "id" in names else None,
        }
    raise ValueError(f"Unknown features file type {path.suffix!r}: use .safetensors or .parquet.")


__all__ = [
    "DinoFeatureExtractionPipeline",
    "extract_linear_features",
    "unpack_batch",
    "extract_features",
    "load_backbone",
    "load_features",
    "save_features",
    "save_model_with_processor",
]
