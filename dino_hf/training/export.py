"""Export a trained DINO teacher backbone as a model folder users load in one line.

The folder holds `config.json`, `model.safetensors`, the modeling code for `trust_remote_code=True`,
`preprocessor_config.json` (the paper's evaluation preprocessing with the training normalisation) and a model card
(`README.md`, `dino_hf.model_card.pretraining_card`). Optionally `vit/` holds the same weights as a plain transformers
`ViTModel`.

- [`export_pretrained`]: a model's teacher backbone, processor and card.
- [`export_run`]: the end of a run: training curves, then the export with its pictures.
- [`export_checkpoint`]: a checkpoint folder of a run, later (`dino-hf-export`, [`dino_hf.cli.export`]).

Uploading is `dino_hf.publishing`'s job; what the card says about a run, `run_summary`'s.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from ..configuration_dino import DinoConfig
from ..image_processing_dino import dino_image_processor
from ..model_card import pretraining_card
from ..modeling_dino import DinoForSelfDistillation, DinoViTModel
from .run_summary import checkpoint_summary


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
    pretraining_card(model.config, training_summary or {}, pictures).save(target / "README.md")
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


def export_run(
    model: DinoForSelfDistillation,
    output_dir: Path,
    *,
    history: list[dict],
    summary: dict[str, Any],
    crop_config: Any,
    export_vit_model: bool = False,
    attention_image: Image.Image | None = None,
) -> Path:
    """The end of a run (on the main process): training curves, then [`export_pretrained`] with both pictures."""
    from .plots import plot_history

    curves = plot_history(history, output_dir / TRAINING_CURVES_FILENAME)
    if curves is not None:
        logger.info("Training curves: %s", curves)
    return export_pretrained(
        model,
        output_dir,
        crop_config=crop_config,
        training_summary=summary,
        export_vit_model=export_vit_model,
        training_curves=curves,
        attention_image=attention_image,
    )


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
    summary = checkpoint_summary(state, hub_model_id)
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


__all__ = ["export_checkpoint", "export_pretrained", "export_run", "save_attention_picture"]
