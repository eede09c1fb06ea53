"""Semantic segmentation with a linear head on frozen DINO features, scored by mean IoU (docs/dense_features.md).

    dino-hf-semantic-segmentation --model_name_or_path outputs/demo/export --image_size 64 \\
        --embedded_options '{"train_per_class": 100, "validation_per_class": 50}' --compare_random_init
    dino-hf-semantic-segmentation --model_name_or_path dino-vits16 --dataset_name /data/my_masks \\
        --output_dir outputs/seg --push_to_hub

The backbone stays frozen: the feature maps of its last `--n_last_blocks` blocks (final LayerNorm applied) are
concatenated, and a BatchNorm + 1x1 convolution trained on them predicts a class per patch, upsampled bilinearly to
the mask. `--dataset_name`: `embedded` (the offline shapes with their masks: background + 10 shapes), a folder of
`<split>/images/` and `<split>/masks/` (single-channel PNGs of class indices), or a `datasets` dataset with an image
and a mask column. `--compare_random_init` trains the same head on the same architecture at its random
initialisation too, and prints both. `--output_dir` saves backbone + head (`FrozenFeatureSegmenter`); `--push_to_hub`
checks the Hub login and creates the repository before anything runs, and uploads that folder at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from ..evaluation.segmentation import (
    EXAMPLES_FILE,
    FrozenFeatureSegmenter,
    SegmentationHeadConfig,
    SegmentationResult,
    dense_backbone,
    frozen_feature_segmentation,
    load_segmentation_split,
    random_backbone,
    save_segmentation_examples,
    segmenter_settings,
)
from ..image_processing_dino import processor_normalisation
from ..model_card import segmentation_card
from ..publishing import create_hub_repo, upload_to_hub
from . import configure_logging
from ._evaluation import write_figures


def build_parser() -> argparse.ArgumentParser:
    defaults = SegmentationHeadConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("model and data")
    data.add_argument("--model_name_or_path", required=True, help="A DinoViTModel folder, released name or run.")
    data.add_argument("--dataset_name", default="embedded", help="'embedded', an images/masks folder, a dataset.")
    data.add_argument("--data_files", default=None, help="Data files for parquet or local sources.")
    data.add_argument(
        "--embedded_options",
        default=None,
        help="Embedded generator options (JSON), e.g. '{\"train_per_class\": 100}'.",
    )
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--image_column", default=None)
    data.add_argument("--mask_column", default=None)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--num_labels", type=int, default=None, help="Default: 1 + the largest class in the masks.")
    data.add_argument("--reduce_labels", action="store_true", help="ADE20K's masks: 0 is ignored, classes move down.")
    data.add_argument(
        "--image_size", type=int, default=None, help="Images resized to this square (default: the model's)."
    )
    head = parser.add_argument_group("head")
    head.add_argument(
        "--n_last_blocks",
        type=int,
        default=None,
        help="Blocks whose maps are concatenated (default: the config's linear-evaluation n_last_blocks).",
    )
    head.add_argument("--epochs", type=int, default=defaults.epochs)
    head.add_argument("--lr", type=float, default=defaults.lr, help="AdamW, cosine schedule.")
    head.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    head.add_argument("--batch_size", type=int, default=defaults.batch_size, help="Images per head step.")
    head.add_argument(
        "--ignore_index", type=int, default=defaults.ignore_index, help="Mask value of unlabelled pixels."
    )
    head.add_argument("--compare_random_init", action="store_true", help="Also train the head on a random network.")
    head.add_argument("--seed", type=int, default=0, help="Head initialisation, batch order, random network.")
    head.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default=None, help="Save backbone + head here (FrozenFeatureSegmenter).")
    output.add_argument("--output_file", type=Path, default=None, help="Write the figures as JSON here.")
    output.add_argument("--push_to_hub", action="store_true", help="Upload --output_dir to the Hub at the end.")
    output.add_argument("--hub_model_id", default=None, help="Default: <your user name>/<name of --output_dir>.")
    output.add_argument("--hub_private_repo", action="store_true")
    output.add_argument("--hub_token", default=None, help="Default: the saved login (`hf auth login`) or HF_TOKEN.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] (a console script exits with its return value, so this returns None)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and score the head; returns `{"model": figures, "random_init": figures (with --compare_random_init),
    "num_labels", "class_names"}`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.output_dir:
        parser.error("--push_to_hub uploads --output_dir: give one.")
    configure_logging()
    set_seed(args.seed)
    # Before any work: a missing login or a refused repository fails now, not after training.
    repo_id = (
        create_hub_repo(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        if args.push_to_hub
        else None
    )
    splits = _splits(args)
    mean, std = processor_normalisation(args.model_name_or_path)
    backbones = {"model": dense_backbone(args.model_name_or_path, args.n_last_blocks)}
    if args.compare_random_init:
        backbones["random_init"] = random_backbone(backbones["model"], args.seed)
    results = {name: _segment(args, backbone, splits, mean, std) for name, backbone in backbones.items()}
    class_names = splits[0].class_names or [f"LABEL_{i}" for i in range(results["model"].num_labels)]
    print(_table(results, class_names))
    summary = {name: result.figures for name, result in results.items()}
    summary.update(num_labels=results["model"].num_labels, class_names=class_names)
    if args.output_dir:
        _save(args, backbones, results, splits, class_names, mean, std, repo_id)
    if repo_id is not None:
        upload_to_hub(
            args.output_dir,
            repo_id,
            token=args.hub_token,
            commit_message="Upload a DINO frozen-feature segmentation head",
        )
    write_figures(summary, args.output_file)
    return summary


def _splits(args: argparse.Namespace):
    options = json.loads(args.embedded_options) if args.embedded_options else None
    common = dict(data_files=args.data_files, image_column=args.image_column, mask_column=args.mask_column)
    if args.dataset_name == "embedded":
        common["embedded_options"] = options
    elif options:
        raise SystemExit("--embedded_options applies to --dataset_name embedded only.")
    train = load_segmentation_split(args.dataset_name, args.train_split, max_samples=args.max_train_samples, **common)
    evaluation = load_segmentation_split(
        args.dataset_name, args.eval_split, max_samples=args.max_eval_samples, **common
    )
    return train, evaluation


def _segment(args: argparse.Namespace, backbone, splits, mean, std) -> SegmentationResult:
    config = SegmentationHeadConfig(args.epochs, args.lr, args.weight_decay, args.batch_size, args.ignore_index)
    return frozen_feature_segmentation(
        backbone,
        *splits,
        image_size=args.image_size,
        mean=mean,
        std=std,
        num_labels=args.num_labels,
        reduce_labels=args.reduce_labels,
        config=config,
        seed=args.seed,
        device=args.device,
    )


def _table(results: dict[str, SegmentationResult], class_names: list[str]) -> str:
    rows = ["| backbone | mIoU | pixel accuracy | mean class accuracy |", "|---|---|---|---|"]
    for name, result in results.items():
        figures = result.figures
        label = "pretrained" if name == "model" else "random initialisation"
        rows.append(
            f"| {label} | {100 * figures['mean_iou']:.1f} | {100 * figures['overall_accuracy']:.1f} | {100 * figures['mean_accuracy']:.1f} |"
        )
    ious = results["model"].figures["per_category_iou"]
    per_class = ", ".join(f"{name} {100 * iou:.1f}" for name, iou in zip(class_names, ious))
    return "\n".join(rows) + f"\nPer-class IoU (pretrained): {per_class}"


def _save(args, backbones, results, splits, class_names, mean, std, repo_id) -> None:
    """The segmenter, its card and a picture of its predictions (and the random network's) on validation images."""
    settings = segmenter_settings(
        results["model"], class_names, mean, std, args.model_name_or_path, backbones["model"].out_features
    )
    if "random_init" in results:
        settings["random_init_figures"] = results["random_init"].figures
    segmenters = {
        name: FrozenFeatureSegmenter(backbone.cpu(), results[name].head, settings)
        for name, backbone in backbones.items()
    }
    folder = segmenters["model"].save_pretrained(args.output_dir)
    save_segmentation_examples(folder / EXAMPLES_FILE, splits[1], segmenters)
    pictures = {
        "Validation images: image, true mask, prediction (then the random network's, when measured)": EXAMPLES_FILE
    }
    segmentation_card(settings, args.dataset_name, pictures, repo_id).save(folder / "README.md")
    print(f"Saved the segmenter (backbone + head) and {EXAMPLES_FILE} to {folder}")


if __name__ == "__main__":
    main()
