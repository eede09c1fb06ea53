"""Data pipeline: streaming image datasets, decoding in DataLoader workers, batched multi-crop on the device.

```python
import torch
from dino_hf.data import DinoMultiCropAugmentation, build_pretraining_loader, load_image_dataset

source = load_image_dataset("embedded", "train")            # or "timm/imagenet-1k-wds", a folder, parquet...
loader = build_pretraining_loader(source, batch_size=64, num_workers=4, seed=0)
augment = DinoMultiCropAugmentation()                         # MultiCropConfig() defaults: the paper's
generator = torch.Generator(device="cuda").manual_seed(0)      # seed + rank
for batch in loader:                                          # endless; batch.stream_state resumes exactly
    batch = batch.to("cuda")
    crops = augment(batch.images, batch.sizes, generator=generator)
    ...
```
"""

from .augmentation import (
    DinoMultiCropAugmentation,
    EvalTransform,
    MultiCropConfig,
    MultiCropOutput,
)
from .decoding import DataQualityError, DataStats, DecodeOptions, ImageBatch, collate_images, decode_image
from .diversity import BatchDiversityCheck, DiversityReport
from .loaders import (
    DEFAULT_SHUFFLE_BUFFER_SIZE,
    PretrainingLoader,
    build_eval_loader,
    build_pretraining_loader,
    evenly_spread_indices,
    subsample_source,
)
from .sources import DEFAULT_DATASET_NAME, ImageSource, load_image_dataset
from .synthetic import EMBEDDED_DATASET_NAME


__all__ = [
    "BatchDiversityCheck",
    "DEFAULT_DATASET_NAME",
    "DEFAULT_SHUFFLE_BUFFER_SIZE",
    "EMBEDDED_DATASET_NAME",
    "DataQualityError",
    "DataStats",
    "DecodeOptions",
    "DinoMultiCropAugmentation",
    "DiversityReport",
    "EvalTransform",
    "ImageBatch",
    "ImageSource",
    "MultiCropConfig",
    "MultiCropOutput",
    "PretrainingLoader",
    "build_eval_loader",
    "evenly_spread_indices",
    "subsample_source",
    "build_pretraining_loader",
    "collate_images",
    "decode_image",
    "load_image_dataset",
]
