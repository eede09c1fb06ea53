"""Weighted k-NN evaluation of frozen DINO features, as in the paper (Caron et al. 2021, Sec. 4.1).

    dino-hf-knn-eval --model_name_or_path outputs/demo/export --dataset_name embedded
    dino-hf-knn-eval --model_name_or_path dino-vits16 --dataset_name timm/imagenet-1k-wds \
        --train_split train --eval_split validation --batch_size 256 --num_workers 8

(`python -m dino_hf.cli.knn_eval` and, in a clone, `python examples/knn_eval.py` are the same program.)

Features are the L2-normalised final-LayerNorm [CLS] tokens of the backbone on center crops (resize 256, crop 224);
every validation image votes with its k nearest training features, weights exp(cos / 0.07). Prints top-1 and
top-5 for each k and writes them as JSON with --output_file. `--pixel_baseline` also prints the same k-NN on the raw
pixels of the same crops (`dino_hf.evaluation.pixel_features`): the floor a learned feature should clear.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..evaluation import (
    PIXEL_BASELINE_SIZE,
    eval_batches,
    extract_features,
    knn_evaluate,
    labelled_source,
    load_backbone,
    pixel_features,
)
from ._evaluation import add_eval_data_arguments, add_sample_limit_arguments, dataset_options, eval_batch_options


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags and run. The k-NN accuracies: `{k: {"top1": ..., "top5": ...}}` (percent), and with
    `--pixel_baseline` the raw pixels' under `"pixel_baseline"`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_eval_data_arguments(parser, {"train_split": ("train", None), "eval_split": ("validation", None)})
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20, 100, 200], help="Numbers of neighbours.")
    parser.add_argument("--temperature", type=float, default=0.07)
    add_sample_limit_arguments(parser, "max_train_samples", "max_eval_samples")
    parser.add_argument(
        "--pixel_baseline",
        action="store_true",
        help=f"Also run k-NN on the raw pixels of the same crops ({PIXEL_BASELINE_SIZE}x{PIXEL_BASELINE_SIZE}, "
        "centred): a learned feature should beat it.",
    )
    parser.add_argument("--output_file", default=None, help="Write the accuracies as JSON here.")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.model_name_or_path).to(device)
    options = eval_batch_options(args, model, device)
    features, pixels = {}, {}
    for split, limit in ((args.train_split, args.max_train_samples), (args.eval_split, args.max_eval_samples)):
        source = labelled_source(args.dataset_name, split, **dataset_options(args))
        batches = eval_batches(source, max_images=limit, **options)
        if args.pixel_baseline:  # the pixel features of the very batches the model sees: one decode for both
            batches = _keeping_pixel_features(batches, pixels.setdefault(split, []))
        features[split] = extract_features(model, batches, normalize=True, device=device)
    results = _knn(features, args, device)
    _print(f"k-NN on {args.dataset_name}", features, args, results)
    if args.pixel_baseline:
        for split, chunks in pixels.items():
            features[split] = {**features[split], "features": torch.cat(chunks)}
        baseline = _knn(features, args, device)
        _print(
            f"k-NN on the raw pixels of the same crops ({PIXEL_BASELINE_SIZE} x {PIXEL_BASELINE_SIZE}, centred)",
            features,
            args,
            baseline,
        )
        results = {**results, "pixel_baseline": baseline}
    if args.output_file:
        with open(args.output_file, "w") as handle:
            json.dump({str(k): v for k, v in results.items()}, handle, indent=2)
    return results


def _keeping_pixel_features(batches, kept: list):
    for batch in batches:
        kept.append(pixel_features(batch[0]).cpu())
        yield batch


def _knn(features: dict, args: argparse.Namespace, device: str) -> dict:
    train, test = features[args.train_split], features[args.eval_split]
    return knn_evaluate(
        train["features"],
        train["labels"],
        test["features"],
        test["labels"],
        ks=[k for k in args.ks if k <= len(train["labels"])],
        temperature=args.temperature,
        device=device,
    )


def _print(title: str, features: dict, args: argparse.Namespace, results: dict) -> None:
    train, test = features[args.train_split], features[args.eval_split]
    print(f"{title} ({len(train['labels'])} train, {len(test['labels'])} {args.eval_split}):")
    for k, accuracy in results.items():
        print(f"  k={k:<4d} top-1 {accuracy['top1']:6.2f}%  top-5 {accuracy['top5']:6.2f}%")


if __name__ == "__main__":
    main()
