"""The released DINO models: names, Hub ids, official download URLs and the paper's accuracies.

A leaf module (standard library only), read by the code that loads models (`dino_hf.hub`, pretraining's
`--model_name_or_path`, fine-tuning) and by the documentation (docs/model_zoo.md shows the same table).

- [`RELEASED_MODELS`]: every model of the reference implementation's model zoo (facebookresearch/dino) with its Hub
  id (the four ViTs are on the Hub as transformers `ViTModel`s), official download URLs, size and the paper's
  ImageNet k-NN / linear top-1.
- [`released_model`]: the entry a paper, torch.hub or file name refers to.
- [`resolve_model_id`]: such names -> Hub ids, so every `from_pretrained` and `--model_name_or_path` takes them.
- [`release_from_official_files`]: the releases that are not on the Hub but load from their official files
  (ResNet-50).

Example:

```python
>>> from dino_hf.releases import released_model, resolve_model_id
>>> resolve_model_id("dino_vits16")
'facebook/dino-vits16'
>>> released_model("dino_resnet50").loads_from_official_files
True
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


OFFICIAL_URL_ROOT = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class ReleasedModel:
    """One model of the DINO model zoo (facebookresearch/dino README, "Pretrained models").

    Attributes:
        name: our name, `dino-<arch>`; torch.hub's is the same with underscores.
        arch: the paper's architecture name.
        hub_id: the Hugging Face Hub repository (transformers `ViTModel` layout), or `None`.
        file_stem: the reference's file name stem, e.g. `dino_deitsmall16` (`<stem>_pretrain.pth`).
        params: backbone parameters as the reference README states them.
        knn_top1, linear_top1: the paper's ImageNet top-1 (%) of k-NN (k=20) and linear evaluation.
        implemented: whether dino_hf has the architecture (ViTs and ResNet-50; XCiT is not implemented).
    """

    name: str
    arch: str
    hub_id: str | None
    file_stem: str
    params: str
    knn_top1: float
    linear_top1: float
    implemented: bool = True

    @property
    def backbone_url(self) -> str:
        return f"{OFFICIAL_URL_ROOT}/{self.file_stem}_pretrain/{self.file_stem}_pretrain.pth"

    @property
    def full_checkpoint_url(self) -> str:
        """Student, teacher (backbone + head), the center and the run's `args`: to continue pretraining from."""
        return f"{OFFICIAL_URL_ROOT}/{self.file_stem}_pretrain/{self.file_stem}_pretrain_full_checkpoint.pth"

    @property
    def loads_from_official_files(self) -> bool:
        """No Hub repository, but an architecture dino_hf has: loaded from `backbone_url` / `full_checkpoint_url`."""
        return self.hub_id is None and self.implemented


RELEASED_MODELS: dict[str, ReleasedModel] = {
    m.name: m
    for m in (
        ReleasedModel("dino-vits16", "ViT-S/16", "facebook/dino-vits16", "dino_deitsmall16", "21M", 74.5, 77.0),
        ReleasedModel("dino-vits8", "ViT-S/8", "facebook/dino-vits8", "dino_deitsmall8", "21M", 78.3, 79.7),
        ReleasedModel("dino-vitb16", "ViT-B/16", "facebook/dino-vitb16", "dino_vitbase16", "85M", 76.1, 78.2),
        ReleasedModel("dino-vitb8", "ViT-B/8", "facebook/dino-vitb8", "dino_vitbase8", "85M", 77.4, 80.1),
        ReleasedModel("dino-resnet50", "ResNet-50", None, "dino_resnet50", "23M", 67.5, 75.3),
        ReleasedModel(
            "dino-xcit-small-12-p16", "XCiT-S12/16", None, "dino_xcit_small_12_p16", "26M", 76.0, 77.8, False
        ),
        ReleasedModel("dino-xcit-small-12-p8", "XCiT-S12/8", None, "dino_xcit_small_12_p8", "26M", 77.1, 79.2, False),
        ReleasedModel(
            "dino-xcit-medium-24-p16", "XCiT-M24/16", None, "dino_xcit_medium_24_p16", "84M", 76.4, 78.8, False
        ),
        ReleasedModel(
            "dino-xcit-medium-24-p8", "XCiT-M24/8", None, "dino_xcit_medium_24_p8", "84M", 77.9, 80.3, False
        ),
    )
}

# Other spellings: the reference README's older torch.hub names and its file names (dashes stand for underscores).
_ALIASES: dict[str, str] = {
    "dino-deits16": "dino-vits16",
    "dino-deits8": "dino-vits8",
    **{m.file_stem.replace("_", "-"): m.name for m in RELEASED_MODELS.values()},
}


def released_model(name: Any) -> ReleasedModel | None:
    """The [`ReleasedModel`] a paper, torch.hub or file name refers to (`"dino_vits16"`, `"dino-vitb8"`, ...);
    `None` for anything else, and for a local path (a folder named like a release is that folder)."""
    if not isinstance(name, str) or os.path.exists(name):
        return None
    key = name.strip().lower().replace("_", "-")
    return RELEASED_MODELS.get(_ALIASES.get(key, key))


def release_from_official_files(name: Any) -> ReleasedModel | None:
    """The release `name` refers to when it loads from its official files (ResNet-50: no Hub repository), else
    `None`."""
    model = released_model(name)
    return model if model is not None and model.loads_from_official_files else None


def resolve_model_id(name_or_path: Any) -> Any:
    """The Hub id of a released model's name; anything else (local paths first) is returned unchanged, and so is the
    name of a release that loads from its official files (see [`release_from_official_files`]).

    Raises `ValueError` for released models that dino_hf does not implement (XCiT), naming their official URL.

    Example:

    ```python
    >>> from dino_hf.releases import resolve_model_id
    >>> resolve_model_id("dino-vitb8"), resolve_model_id("dino_deitsmall16"), resolve_model_id("my/model")
    ('facebook/dino-vitb8', 'facebook/dino-vits16', 'my/model')
    ```
    """
    model = released_model(name_or_path)
    if model is None or model.loads_from_official_files:
        return name_or_path
    if model.hub_id is None:
        raise ValueError(
            f"{name_or_path!r} ({model.arch}) has no Hub repository and dino_hf implements only the DINO ViTs and "
            f"ResNet-50, so it cannot be loaded here: its weights are at {model.backbone_url} (full checkpoint: "
            f"{model.full_checkpoint_url}); use torch.hub.load('facebookresearch/dino:main', "
            f"'{model.name.replace('-', '_')}'). ViT checkpoints of the reference convert with "
            "dino_hf.conversion.from_official_checkpoint."
        )
    return model.hub_id


__all__ = [
    "OFFICIAL_URL_ROOT",
    "RELEASED_MODELS",
    "ReleasedModel",
    "release_from_official_files",
    "released_model",
    "resolve_model_id",
]
