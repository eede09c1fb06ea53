#!/usr/bin/env python
"""Linear evaluation of frozen DINO features, as in the paper (Caron et al. 2021, Sec. 4.1 and appendix).

    python examples/linear_eval.py --model_name_or_path outputs/demo/export --dataset_name embedded --epochs 10
    accelerate launch examples/linear_eval.py --model_name_or_path dino-vits16 \
        --dataset_name timm/imagenet-1k-wds --batch_size 256 --epochs 100

A linear classifier on the frozen backbone: ViT-S style features (the [CLS] of the last 4 blocks, concatenated) or
ViT-B style (last [CLS] + average-pooled patch tokens), chosen from the model's width unless given. SGD with
momentum 0.9, lr 0.001 x total batch / 256 with a cosine schedule, no weight decay; training images get a
random-resized crop and a flip, validation images the center crop.
"""

from __future__ import annotations

import argparse
import json

from accelerate import Accelerator

from dino_hf.data import load_image_dataset
from dino_hf.evaluation import LinearProbeConfig, load_backbone, train_linear_probe
from dino_hf.evaluation.datasets import eval_batches, probe_train_batches
from dino_hf.evaluation.features import processor_normalisation


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A DinoViTModel folder, Hub id or training run.")
    parser.add_argument("--dataset_name", default="embedded")
    parser.add_argument("--data_files", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="validation")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--image_size", type=int, default=None, help="Crop size (default: the model's image_size).")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.001, help="Learning rate at a total batch of 256.")
    parser.add_argument("--batch_size", type=int, default=128, help="Images per process.")
    parser.add_argument(
        "--n_last_blocks", type=int, default=None, help="4 for ViT-S, 1 for ViT-B (default: by width)."
    )
    parser.add_argument(
        "--avgpool_patchtokens", type=int, choices=[0, 1], default=None, help="1 for ViT-B (default: by width)."
    )
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_file", default=None, help="Write the final metrics and history as JSON here.")
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    model = load_backbone(args.model_name_or_path)
    overrides = {"epochs": args.epochs, "base_lr": args.lr}
    if args.n_last_blocks is not None:
        overrides["n_last_blocks"] = args.n_last_blocks
    if args.avgpool_patchtokens is not None:
        overrides["avgpool_patchtokens"] = bool(args.avgpool_patchtokens)
    config = LinearProbeConfig.for_backbone(model.config, **overrides)
    image_size = args.image_size or model.config.image_size
    mean, std = processor_normalisation(args.model_name_or_path)
    sources = {
        split: load_image_dataset(
            args.dataset_name,
            split=split,
            data_files=args.data_files,
            image_column=args.image_column,
            label_column=args.label_column,
        )
        for split in (args.train_split, args.eval_split)
    }
    train_source = sources[args.train_split]
    if train_source.label_column is None:
        parser.error(f"{args.dataset_name} has no label column; pass --label_column.")
    num_labels = len(train_source.class_names) if train_source.class_names else None
    if num_labels is None:
        parser.error("The label column is not a ClassLabel; the number of classes is unknown.")
    common = {
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": accelerator.device,
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
    }
    train_batches = probe_train_batches(train_source, seed=args.seed, **common)

    def validation():
        return ((pixels, labels) for pixels, labels, _ in eval_batches(sources[args.eval_split], **common))

    result = train_linear_probe(
        model,
        train_batches,
        num_labels,
        config,
        eval_batches=_Reiterable(validation),
        accelerator=accelerator,
        global_batch_size=args.batch_size * accelerator.num_processes,
    )
    final = result.history[-1]
    accelerator.print(f"Linear probe on {args.dataset_name}: best top-1 {result.best_top1:.2f}%, last epoch {final}")
    if args.output_file and accelerator.is_main_process:
        with open(args.output_file, "w") as handle:
            json.dump({"best_top1": result.best_top1, "history": result.history}, handle, indent=2)
    return {"best_top1": result.best_top1, "history": result.history}


class _Reiterable:
    """Each iteration reads the validation split again."""

    def __init__(self, factory):
        self.factory = factory

    def __iter__(self):
        return iter(self.factory())


if __name__ == "__main__":
    main()
