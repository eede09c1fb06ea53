"""Export a trained DINO teacher backbone as a model folder users load in one line, and publish it.

The folder holds `config.json`, `model.safetensors`, the modeling code for `trust_remote_code=True`,
`preprocessor_config.json` (the paper's evaluation preprocessing with the training normalisation) and a model card
(`README.md`). Optionally `vit/` holds the same weights as a plain transformers `ViTModel`.

The CLI to export any checkpoint is `dino-hf-export outputs/dino/checkpoint-1000 exported/` ([`dino_hf.cli.export`]).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image

from ..configuration_dino import DinoConfig
from ..image_processing_dino import dino_image_processor
from ..modeling_dino import DinoForSelfDistillation, DinoViTModel
from .arguments import mask_secrets, masked_arguments
from .publishing import create_hub_repo, upload_to_hub


logger = logging.getLogger(__name__)

EXPORT_DIRNAME = "export"
TRAINING_CURVES_FILENAME = "training_curves.png"
ATTENTION_FILENAME = "attention_maps.png"


def export_pretrained(
    model: DinoForSelfDistillation,
    output_dir: str | Path,
    *,
    crop_config=None,
    training_summary: dict[str, Any] | None = None,
    export_vit_model: bool = False,
    export_dirname: str = EXPORT_DIRNAME,
    training_curves: str | Path | None = None,
    attention_image: Image.Image | None = None,
) -> Path:
    """Write the teacher backbone, its image processor and a model card to `output_dir/export_dirname`.

    `training_curves` (a PNG, e.g. from `plot_history`) is copied next to the model and `attention_image` becomes
    `attention_maps.png` (the exported teacher's last-block attention); the card shows both.
    """
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
    pictures = {}
    if training_curves is not None:
        pictures["Training curves"] = TRAINING_CURVES_FILENAME
        shutil.copyfile(training_curves, target / TRAINING_CURVES_FILENAME)
    if attention_image is not None and model.config.backbone == "vit":  # a ResNet has no attention to show
        save_attention_picture(backbone, attention_image, target / ATTENTION_FILENAME, **normalisation)
        pictures["Self-attention of the last block ([CLS] token, every head; below: 60% of the mass)"] = (
            ATTENTION_FILENAME
        )
    model_card(model.config, training_summary or {}, pictures).save(target / "README.md")
    if training_summary:
        (target / "training_summary.json").write_text(json.dumps(training_summary, indent=2, default=str))
    logger.info("Exported the teacher backbone to %s", target)
    return target


def save_attention_picture(backbone: DinoViTModel, image: Image.Image, path: Path, **normalisation) -> Path:
    """The backbone's last-block attention maps of `image` (shorter side resized to the model's image size)."""
    from ..evaluation.attention import attention_maps, save_attention_grid, threshold_attention
    from ..image_processing_dino import prepare_image

    image, pixels = prepare_image(image, backbone.config.image_size, backbone.config.patch_size, **normalisation)
    maps = attention_maps(backbone, pixels)[0].float()
    save_attention_grid(image, maps, threshold_attention(maps, 0.6), path)
    return path


def first_image(source) -> Image.Image:
    """The first image of an `ImageSource` (in storage order), decoded."""
    record = next(iter(source.dataset))[source.image_column]
    data = record.get("bytes") if isinstance(record, dict) else None
    path = record.get("path") if isinstance(record, dict) else None
    image = Image.open(io.BytesIO(data)) if data else Image.open(path)
    return image.convert("RGB")


def _hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub repository id (not a local path or URL, not the embedded dataset), else None."""
    if not name or name == "embedded" or "://" in name or Path(name).exists() or name.startswith((".", "/", "~")):
        return None
    return name


def model_card(
    config: DinoConfig, summary: dict[str, Any], pictures: dict[str, str] | None = None, license: str = "apache-2.0"
) -> ModelCard:
    """The model card (`huggingface_hub.ModelCard`): metadata (license, library, pipeline tag, datasets, base model,
    a model-index with the k-NN top-1 when the run measured it), training set-up, pictures, hyper-parameters, usage.

    `summary` is what [`training_summary`] returns (its `args` already have their secrets masked; they are masked
    again here); `pictures` maps captions to file names next to the card.
    """
    repo = summary.get("hub_model_id") or "path/to/this/folder"
    name = repo.split("/")[-1] if summary.get("hub_model_id") else f"dino-{summary.get('arch', 'vit')}"
    dataset = _hub_id(summary.get("dataset_name"))
    knn = summary.get("knn") or {}
    knn_top1 = summary.get("final_metrics", {}).get("knn_top1")
    eval_results = None
    if knn_top1 is not None:
        knn_dataset = knn.get("dataset") or summary.get("dataset_name", "unknown")
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name=f"k-NN classification (k={knn.get('k', '?')}, frozen features)",
                dataset_type=_hub_id(knn_dataset) or knn_dataset,
                dataset_name=knn_dataset,
                dataset_split=knn.get("split"),
                metric_type="accuracy",
                metric_name="k-NN top-1",
                metric_value=round(100 * float(knn_top1), 2),
            )
        ]
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        datasets=[dataset] if dataset else None,
        base_model=_hub_id(summary.get("base_model")),
        model_name=name,
        eval_results=eval_results,
        tags=["dino", "self-supervised-learning", "vision-transformer", "dino_hf"],
    )
    body = _card_body(config, summary, pictures or {}, repo)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _card_body(config: DinoConfig, summary: dict[str, Any], pictures: dict[str, str], repo: str) -> str:
    metrics = summary.get("final_metrics", {})
    metric_rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    args = mask_secrets(summary.get("args") or {})
    arg_rows = "\n".join(f"| {k} | `{v}` |" for k, v in sorted(args.items()))
    figures = "\n\n".join(f"{caption}:\n\n![{caption}]({file})" for caption, file in pictures.items())
    base = f"| started from | {summary['base_model']} |\n" if summary.get("base_model") else ""
    return f"""
{_architecture_section(config, summary.get("arch", "custom"))}| DINO head prototypes (training only) | {config.out_dim} |

{figures}

## Training

| | |
|---|---|
| dataset | {summary.get("dataset_name", "unknown")} |
{base}| steps | {summary.get("global_step", "unknown")} |
| processes x batch per process | {summary.get("world_size", "?")} x {summary.get("per_device_train_batch_size", "?")} |
| schedule length (epochs) | {summary.get("epochs", "?")} |
| crops | {summary.get("crops", "?")} |

Final metrics:

| metric | value |
|---|---|
{metric_rows or "| (none) | |"}

<details>
<summary>Hyper-parameters (every flag of the run)</summary>

| flag | value |
|---|---|
{arg_rows or "| (not recorded) | |"}

</details>

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


def push_to_hub(
    folder: str | Path, repo_id: str | None = None, *, token: str | None = None, private: bool = False
) -> str:
    """Create (or find) the Hub repository and upload the exported folder: model, processor, card and pictures.

    `repo_id` defaults to `<user>/<folder name>` (see [`create_hub_repo`]).
    """
    repo_id = create_hub_repo(folder, repo_id, token=token, private=private)
    return upload_to_hub(folder, repo_id, token=token)


def training_summary(
    model_args: Any,
    data_args: Any,
    training_args: Any,
    result: Any,
    world_size: int,
    hub_model_id: str | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """What `training_summary.json` and the model card say about a run (every `*_token` masked). `base_model`: what
    the run started from (a Hub id for a released model), default `--model_name_or_path`."""
    return {
        "hub_model_id": hub_model_id or training_args.hub_model_id,
        "arch": model_args.arch,
        "patch_size": model_args.patch_size,
        "base_model": base_model or getattr(model_args, "model_name_or_path", None),
        "dataset_name": data_args.dataset_name,
        "global_step": result.global_step,
        "world_size": world_size,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "epochs": training_args.epochs,
        "crops": f"2x{data_args.global_crops_size} + {data_args.local_crops_number}x{data_args.local_crops_size}",
        "final_metrics": result.final_metrics,
        "knn": {
            "dataset": data_args.knn_dataset_name or data_args.dataset_name,
            "split": data_args.knn_eval_split,
            "k": data_args.knn_k,
        },
        "args": masked_arguments(model_args, data_args, training_args),
    }


def validation_image(data_args: Any) -> Image.Image | None:
    """The first image of the k-NN evaluation split (the validation split by default), for the card's attention
    picture; None, with a warning, when it cannot be read."""
    from ..data import load_image_dataset

    same_dataset = data_args.knn_dataset_name is None
    try:
        source = load_image_dataset(
            data_args.knn_dataset_name or data_args.dataset_name,
            split=data_args.knn_eval_split,
            data_files=data_args.data_files if same_dataset else None,
            streaming=data_args.streaming,
            image_column=data_args.image_column if same_dataset else None,
            embedded_options=data_args.embedded_options_dict() if same_dataset else None,
        )
        return first_image(source)
    except Exception as error:
        logger.warning(
            "The model card gets no attention picture: no image in split %r (%s).", data_args.knn_eval_split, error
        )
        return None


def publish_run(
    model: DinoForSelfDistillation,
    output_dir: Path,
    *,
    history: list[dict],
    summary: dict[str, Any],
    crop_config: Any,
    data_args: Any,
    training_args: Any,
    hub_model_id: str | None,
) -> Path:
    """The end of a run, on the main process: training curves, export (card with pictures), upload when asked."""
    from .plots import plot_history

    curves = plot_history(history, output_dir / TRAINING_CURVES_FILENAME)
    if curves is not None:
        logger.info("Training curves: %s", curves)
    export_dir = export_pretrained(
        model,
        output_dir,
        crop_config=crop_config,
        training_summary=summary,
        export_vit_model=training_args.export_vit_model,
        training_curves=curves,
        attention_image=validation_image(data_args) if model.config.backbone == "vit" else None,
    )
    if hub_model_id:
        upload_to_hub(export_dir, hub_model_id, token=training_args.hub_token)
    return export_dir


def export_checkpoint(
    checkpoint: str | Path, output_dir: str | Path, export_vit_model: bool = False, hub_model_id: str | None = None
) -> Path:
    """Export the teacher backbone of a training checkpoint folder (written by the trainer)."""
    from . import checkpointing as ckpt

    checkpoint = ckpt.resolve_checkpoint(checkpoint, Path(checkpoint).parent)
    state = ckpt.load_trainer_state(checkpoint)
    config = DinoConfig.from_dict(state["model_config"])
    model = DinoForSelfDistillation(config)
    model.load_state_dict(ckpt.load_model_state(checkpoint))
    summary = {
        "global_step": state["global_step"],
        "final_metrics": (state.get("history") or [{}])[-1],
        "hub_model_id": hub_model_id,
        "args": mask_secrets(state.get("args") or {}),
    }
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


if __name__ == "__main__":  # `python -m dino_hf.training.export`, kept from earlier versions
    from ..cli.export import main

    main()


__all__ = [
    "export_checkpoint",
    "export_pretrained",
    "model_card",
    "publish_run",
    "push_to_hub",
    "save_attention_picture",
    "training_summary",
]
