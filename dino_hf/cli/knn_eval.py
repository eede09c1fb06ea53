"""Weighted k-NN evaluation of frozen DINO features, as in the paper (Caron et al. 2021, Sec. 4.1).

    dino-hf-knn-eval --model_name_or_path outputs/demo/export --dataset_name embedded
    dino-hf-knn-eval --model_name_or_path dino-vits16 --dataset_name timm/imagenet-1k-wds \
        --train_split train --eval_split validation --batch_size 256 --num_workers 8

(`python -m dino_hf.cli.knn_eval` and, in a clone, `python examples/knn_eval.py` are the same program.)

Features are the L2-normalised final-LayerNorm [CLS] tokens of the backbone on center crops (resize 256, crop 224);
every validation image votes with its k nearest training features, weights exp(cos / 0.07). Prints top-1 and
top-5 for each k and writes them as JSON with --output_file.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..evaluation import extract_features, knn_evaluate, load_backbone
from ..evaluation.eval_data import eval_batches, labelled_source
from ..image_processing_dino import processor_normalisation


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags and run. The k-NN accuracies: `{k: {"top1": ..., "top5": ...}}` (percent)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A DinoViTModel folder, Hub id or training run.")
    parser.add_argument(
        "--dataset_name", default="embedded", help="Any source of docs/data.md ('embedded', a Hub id...)."
    )
    parser.add_argument("--data_files", default=None, help="Data files for parquet/webdataset/local sources.")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="validation")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--image_size", type=int, default=None, help="Crop size (default: the model's image_size).")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20, 100, 200], help="Numbers of neighbours.")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--output_file", default=None, help="Write the accuracies as JSON here.")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.model_name_or_path).to(device)
    image_size = args.image_size or model.config.image_size
    mean, std = processor_normalisation(args.model_name_or_path)
    features = {}
    for split, limit in ((args.train_split, args.max_train_samples), (args.eval_split, args.max_eval_samples)):
        data = {"data_files": args.data_files, "image_column": args.image_column, "label_column": args.label_column}
        source = labelled_source(args.dataset_name, split, **data)
        batches = eval_batches(
            source,
            image_size=image_size,
            mean=mean,
            std=std,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            max_images=limit,
        )
        features[split] = extract_features(model, batches, normalize=True, device=device)
    train, test = features[args.train_split], features[args.eval_split]
    ks = [k for k in args.ks if k <= len(train["labels"])]
    results = knn_evaluate(
        train["features"],
        train["labels"],
        test["features"],
        test["labels"],
        ks=ks,
        temperature=args.temperature,
        device=device,
    )
    print(f"k-NN on {args.dataset_name} ({len(train['labels'])} train, {len(test['labels'])} {args.eval_split}):")
    for k, accuracy in results.items():
        print(f"  k={k:<4d} top-1 {accuracy['top1']:6.2f}%  top-5 {accuracy['top5']:6.2f}%")
    if args.output_file:
        with open(args.output_file, "w") as handle:
            json.dump({str(k): v for k, v in results.items()}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
