"""Convert DINO weights to dino_hf folders (save_pretrained, safetensors), or export them to transformers' ViTModel.

    dino-hf-convert official dino_deitsmall16_pretrain.pth dino-vits16                     # DinoViTModel
    dino-hf-convert official dino_deitsmall16_pretrain_full_checkpoint.pth dino-run       # DinoForSelfDistillation
    dino-hf-convert timm vit_small_patch16_224.dino/model.safetensors dino-vits16
    dino-hf-convert vit dino-vits16 dino-vits16-local --layer-norm-eps 1e-6                # a name or Hub id
    dino-hf-convert to-vit dino-vits16-local dino-vits16-vit                               # back to ViTModel

(`python -m dino_hf.cli.convert` is the same program.) Backbones are saved with the DINO evaluation image processor,
ready for `pipeline("image-feature-extraction")`; the converters are in `dino_hf.conversion`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import PreTrainedConfig, PreTrainedModel, ResNetConfig

from ..configuration_dino import DinoConfig
from ..conversion import from_official_checkpoint, from_timm_checkpoint, from_vit_model, to_vit_model
from ..image_processing_dino import dino_image_processor
from ..modeling_dino import DinoForSelfDistillation, DinoViTModel
from ..releases import resolve_model_id
from . import configure_logging


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> PreTrainedModel:
    """Parse the flags, convert and save. The converted model."""
    args = _build_parser().parse_args(argv)
    configure_logging()  # the program, not the library, configures logging (e.g. official files' downloads)
    config = DinoConfig.from_pretrained(args.config) if getattr(args, "config", None) else None
    if args.source == "official":
        model = from_official_checkpoint(
            args.input, config, allow_unpickling=args.allow_unpickling, checkpoint_key=args.checkpoint_key
        )
    elif args.source == "timm":
        model = from_timm_checkpoint(args.input, config)
    elif args.source == "vit":
        model = from_vit_model(resolve_model_id(args.input), layer_norm_eps=args.layer_norm_eps)
    else:
        model = to_vit_model(DinoViTModel.from_pretrained(args.input))
    with_processor = not args.no_image_processor and not isinstance(model, DinoForSelfDistillation)
    _save(model, args.output_dir, with_processor)
    print(f"Saved {type(model).__name__} ({_architecture(model.config)}) to {args.output_dir}")
    return model


def _architecture(config: PreTrainedConfig) -> str:
    if isinstance(config, ResNetConfig):
        return f"ResNet, stage widths {config.hidden_sizes}, depths {config.depths}"
    if getattr(config, "backbone", None) == "resnet":  # a DinoConfig; a ViTConfig has no such field
        return f"ResNet, stage widths {config.resnet_hidden_sizes}, depths {config.resnet_depths}"
    return (
        f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, patch "
        f"{config.patch_size}, image {config.image_size}, layer_norm_eps {config.layer_norm_eps}"
    )


def _save(model: PreTrainedModel, output_dir: Path, with_processor: bool) -> None:
    model.save_pretrained(output_dir)
    if with_processor:
        # A ResNet has no native size: the paper's 224 evaluation crop.
        image_size = getattr(model.config, "image_size", 224)
        dino_image_processor(image_size=image_size).save_pretrained(output_dir)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino-hf-convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    official = sub.add_parser(
        "official",
        help="reference backbone (*_pretrain.pth) -> DinoViTModel, or full training checkpoint -> "
        "DinoForSelfDistillation",
    )
    official.add_argument(
        "--allow-unpickling",
        action="store_true",
        help="let torch.load unpickle objects other than tensors, containers and argparse Namespaces (trusted files "
        "only; the reference's full checkpoints load without it)",
    )
    official.add_argument("--checkpoint-key", default=None, help='read one network\'s backbone, e.g. "teacher"')
    timm = sub.add_parser("timm", help="timm vit_*_224.dino state dict -> DinoViTModel")
    vit = sub.add_parser(
        "vit", help="transformers ViTModel folder, Hub id or name (facebook/dino-vits16, dino-vits16) -> DinoViTModel"
    )
    vit.add_argument(
        "--layer-norm-eps", type=float, default=None, help="default: keep the source's (1e-12 on the Hub)"
    )
    to_vit = sub.add_parser("to-vit", help="DinoViTModel folder -> transformers ViTModel folder")
    for command in (official, timm, vit, to_vit):
        command.add_argument("input", help="file, folder or Hub id to read")
        command.add_argument("output_dir", type=Path, help="folder to write (save_pretrained)")
        command.add_argument(
            "--no-image-processor", action="store_true", help="do not save the DINO evaluation image processor"
        )
    for command in (official, timm):
        command.add_argument(
            "--config", default=None, help="a DinoConfig (config.json or its folder); default: infer from the weights"
        )
    return parser


if __name__ == "__main__":
    main()
