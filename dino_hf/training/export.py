"""Export a trained DINO teacher backbone as a model folder users load in one line, and publish it.

The folder holds `config.json`, `model.safetensors`, the modeling code for `trust_remote_code=True`,
`preprocessor_config.json` (the paper's evaluation preprocessing with the training normalisation) and a model card
(`README.md`). Optionally `vit/` holds the same weights as a plain transformers `ViTModel`.

Also a CLI to export any checkpoint: `python -m dino_hf.training.export outputs/dino/checkpoint-1000 exported/`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..configuration_dino import DinoConfig
from ..modeling_dino import DinoForSelfDistillation


logger = logging.getLogger(__name__)

EXPORT_DIRNAME = "export"


def export_pretrained(
    model: DinoForSelfDistillation,
    output_dir: str | Path,
    *,
    crop_config=None,
    training_summary: dict[str, Any] | None = None,
    export_vit_model: bool = False,
    export_dirname: str = EXPORT_DIRNAME,
) -> Path:
    """Write the teacher backbone, its image processor and a model card to `output_dir/export_dirname`."""
    from ..evaluation.features import dino_image_processor

    target = Path(output_dir) / export_dirname
    target.mkdir(parents=True, exist_ok=True)
    backbone = model.export_teacher_backbone()
    backbone.save_pretrained(target)
    image_size = model.config.image_size  # the global crop size the run trained at (the ViT's position grid)
    normalisation = {"mean": tuple(crop_config.mean), "std": tuple(crop_config.std)} if crop_config else {}
    processor = dino_image_processor(image_size=image_size, **normalisation)
    processor.save_pretrained(target)
    if export_vit_model and model.config.backbone != "vit":
        logger.warning("--export_vit_model: a ResNet backbone is exported as transformers' ResNetModel already.")
    elif export_vit_model:
        from ..conversion import to_vit_model

        to_vit_model(backbone).save_pretrained(target / "vit")
        processor.save_pretrained(target / "vit")
    (target / "README.md").write_text(model_card(model.config, training_summary or {}))
    if training_summary:
        (target / "training_summary.json").write_text(json.dumps(training_summary, indent=2, default=str))
    logger.info("Exported the teacher backbone to %s", target)
    return target


def model_card(config: DinoConfig, summary: dict[str, Any]) -> str:
    """A model card with the training set-up, the final metrics and a usage snippet."""
    metrics = summary.get("final_metrics", {})
    metric_rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    arch = summary.get("arch", "custom")
    repo = summary.get("hub_model_id") or "path/to/this/folder"
    return f"""---
library_name: transformers
pipeline_tag: image-feature-extraction
tags:
- dino
- self-supervised-learning
- vision-transformer
- dino_hf
---

{_architecture_section(config, arch)}| DINO head prototypes (training only) | {config.out_dim} |

## Training

| | |
|---|---|
| dataset | {summary.get("dataset_name", "unknown")} |
| steps | {summary.get("global_step", "unknown")} |
| processes x batch per process | {summary.get("world_size", "?")} x {summary.get("per_device_train_batch_size", "?")} |
| schedule length (epochs) | {summary.get("epochs", "?")} |
| crops | {summary.get("crops", "?")} |

Final metrics:

| metric | value |
|---|---|
{metric_rows or "| (none) | |"}

## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)  # or `import dino_hf` first
inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")
with torch.no_grad():
    feature = model(**inputs).pooler_output  # the DINO feature
```

Or as a pipeline: `pipeline("image-feature-extraction", model="{repo}", trust_remote_code=True)`.
"""


def _architecture_section(config: DinoConfig, arch: str) -> str:
    """Title, description and the backbone rows of the architecture table, for a ViT or a ResNet."""
    if config.backbone == "resnet":
        return f"""# DINO {arch} (teacher backbone)

A ResNet (transformers' `ResNetModel`) pretrained with DINO (self-distillation with no labels, Caron et al. 2021)
using [dino_hf](https://github.com/dino-hf/dino_hf). The feature is the globally average-pooled last stage
(`pooler_output.flatten(1)`, {config.feature_size} channels).

## Architecture

| | |
|---|---|
| stem / stage widths / depths | {config.resnet_embedding_size} / {config.resnet_hidden_sizes} / {config.resnet_depths} |
| block | {config.resnet_layer_type} (stride on the 3x3 convolution, as torchvision) |
"""
    return f"""# DINO {arch}/{config.patch_size} (teacher backbone)

A Vision Transformer pretrained with DINO (self-distillation with no labels, Caron et al. 2021) using
[dino_hf](https://github.com/dino-hf/dino_hf). The feature is the final-LayerNorm [CLS] token (`pooler_output`).

## Architecture

| | |
|---|---|
| width / depth / heads | {config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads} |
| patch size | {config.patch_size} |
| image size (position embeddings) | {config.image_size} (other sizes divisible by the patch are interpolated) |
"""


def push_to_hub(folder: str | Path, repo_id: str | None, *, token: str | None = None, private: bool = False) -> str:
    """Create (if needed) the Hub repository and upload the exported folder: model, processor and card."""
    from huggingface_hub import HfApi

    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/dino-vits16).")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message="Upload DINO model trained with dino_hf"
    )
    logger.info("Pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path, export_vit_model: bool = False) -> Path:
    """Export the teacher backbone of a training checkpoint folder (written by the trainer)."""
    from . import checkpointing as ckpt

    checkpoint = ckpt.resolve_checkpoint(checkpoint, Path(checkpoint).parent)
    state = ckpt.load_trainer_state(checkpoint)
    config = DinoConfig.from_dict(state["model_config"])
    model = DinoForSelfDistillation(config)
    model.load_state_dict(ckpt.load_model_state(checkpoint))
    summary = {"global_step": state["global_step"], "final_metrics": (state.get("history") or [{}])[-1]}
    crops = state.get("multicrop_config")
    normalisation = SimpleNamespace(mean=crops["mean"], std=crops["std"]) if crops else None
    return export_pretrained(
        model,
        output_dir,
        crop_config=normalisation,
        training_summary=summary,
        export_vit_model=export_vit_model,
        export_dirname=".",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the teacher backbone of a dino_hf training checkpoint.")
    parser.add_argument("checkpoint", help="A checkpoint-<step> folder (or 'latest' with --output_dir of the run).")
    parser.add_argument("output_dir", help="Where to write the model folder.")
    parser.add_argument("--export_vit_model", action="store_true", help="Also write a plain ViTModel in vit/.")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id")
    args = parser.parse_args(argv)
    folder = export_checkpoint(args.checkpoint, args.output_dir, args.export_vit_model)
    if args.push_to_hub:
        push_to_hub(folder, args.hub_model_id)
    print(folder)


if __name__ == "__main__":
    main()


__all__ = ["export_checkpoint", "export_pretrained", "model_card", "push_to_hub"]
