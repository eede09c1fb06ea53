"""Linear evaluation of frozen DINO features (Caron et al. 2021, Sec. 4.1 and appendix), a grid of learning rates at once.

    dino-hf-linear-eval --model_name_or_path outputs/demo/export --dataset_name embedded --epochs 10
    dino-hf-linear-eval --model_name_or_path outputs/demo/export --dataset_name embedded --epochs 100 \\
        --features_dir outputs/demo/linear_features
    accelerate launch -m dino_hf.cli.linear_eval --model_name_or_path dino-vits16 \\
        --dataset_name timm/imagenet-1k-wds --batch_size 128 --epochs 100

The reference's protocol: linear classifiers on the frozen backbone's features, ViT-S style (the [CLS] of the last 4
blocks, concatenated) or ViT-B style (last [CLS] + average-pooled patch tokens), chosen from the model's width unless
given; SGD with momentum 0.9, lr base_lr x total batch / 256, cosine schedule, no weight decay; training images get a
random-resized crop and a flip, validation images the center crop. Unlike the reference (one head at base_lr 0.001,
tuned for 100 ImageNet epochs), every base lr of --lr (and weight decay of --weight_decay) trains its own head on the
same features, one backbone forward per batch, and the head with the best validation top-1 is reported; `--lr 0.001`
is the reference's single head. With --features_dir the features of both splits are extracted once (center crops: no
training augmentation) and stored there, and the heads train on them: fast, and reusable across runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..data import subsample_source
from ..evaluation import (
    DEFAULT_BASE_LRS,
    LinearProbeConfig,
    LinearProbeResult,
    eval_batches,
    extract_probe_features,
    labelled_source,
    load_backbone,
    load_features,
    probe_train_batches,
    save_features,
    train_linear_probe,
    train_linear_probe_on_features,
)
from . import configure_logging
from ._evaluation import add_eval_data_arguments, add_sample_limit_arguments, dataset_options, eval_batch_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_eval_data_arguments(
        parser,
        {
            "train_split": ("train", None),
            "eval_split": ("validation", "Chooses the best head and reports its figure."),
        },
    )
    add_sample_limit_arguments(parser, "max_train_samples", "max_eval_samples")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--lr",
        type=float,
        nargs="+",
        default=list(DEFAULT_BASE_LRS),
        help="Base learning rates at a total batch of 256, one head each ('--lr 0.001': the reference's one head).",
    )
    parser.add_argument(
        "--weight_decay", type=float, nargs="+", default=[0.0], help="Weight decays, crossed with --lr."
    )
    parser.add_argument(
        "--n_last_blocks", type=int, default=None, help="4 for ViT-S, 1 for ViT-B (default: by width)."
    )
    parser.add_argument(
        "--avgpool_patchtokens", type=int, choices=[0, 1], default=None, help="1 for ViT-B (default: by width)."
    )
    parser.add_argument(
        "--crop_scale",
        type=float,
        nargs=2,
        default=[0.08, 1.0],
        help="Area range of the online mode's random-resized training crops (the reference's 0.08 1).",
    )
    parser.add_argument("--eval_every", type=int, default=1, help="Evaluate every N epochs (and after the last).")
    parser.add_argument(
        "--features_dir",
        default=None,
        help="Cached mode: store both splits' features here once (center crops, no training augmentation; reused "
        "when the model, data and layout match) and train the heads on them. One process.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seeds the heads' initialisation and the data order.")
    parser.add_argument("--output_file", default=None, help="Write every head's figures and the history as JSON.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] (a console script exits with its return value, so this returns None)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and report the probe; returns `{"mode", "best_top1", "best", "heads", "history"}`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    accelerator = Accelerator()
    set_seed(args.seed)  # the heads' initialisation: a run is repeatable
    model = load_backbone(args.model_name_or_path)
    overrides = {"epochs": args.epochs, "base_lrs": args.lr, "weight_decays": args.weight_decay}
    overrides["eval_every"] = args.eval_every
    if args.n_last_blocks is not None:
        overrides["n_last_blocks"] = args.n_last_blocks
    if args.avgpool_patchtokens is not None:
        overrides["avgpool_patchtokens"] = bool(args.avgpool_patchtokens)
    config = LinearProbeConfig.for_backbone(model.config, **overrides)
    data = dataset_options(args)
    limits = {args.train_split: args.max_train_samples, args.eval_split: args.max_eval_samples}
    sources = {}
    for split, limit in limits.items():
        # A limited split is read random-access (an Arrow cache), so the probe sees a seeded subset spread evenly
        # over the split, the same images every epoch, rather than a stream's first records.
        source = labelled_source(args.dataset_name, split, streaming=limit is None, **data)
        sources[split] = subsample_source(source, limit, seed=args.seed)
    num_labels = len(sources[args.train_split].class_names or [])
    if not num_labels:
        parser.error("The label column is not a ClassLabel; the number of classes is unknown.")
    common = eval_batch_options(args, model, accelerator.device)
    common.update(rank=accelerator.process_index, world_size=accelerator.num_processes)
    if args.features_dir:
        if accelerator.num_processes > 1:
            parser.error("--features_dir runs in one process (the heads on stored features are cheap).")
        if args.crop_scale != parser.get_default("crop_scale"):
            parser.error("--crop_scale sets the online mode's training crops; --features_dir stores center crops.")
        stored = _cached_features(args, model, config, sources, common, accelerator)
        train, validation = stored
        result = train_linear_probe_on_features(
            train, num_labels, config, eval_features=validation, batch_size=args.batch_size, seed=args.seed
        )
    else:
        result = _train_online(args, model, config, sources, common, num_labels, accelerator)
    return _report(args, result, accelerator, mode="cached features" if args.features_dir else "online")


def _train_online(args, model, config, sources, common, num_labels, accelerator) -> LinearProbeResult:
    train_split = sources[args.train_split]
    train_batches = probe_train_batches(train_split, seed=args.seed, crop_scale=tuple(args.crop_scale), **common)

    def validation():
        return ((pixels, labels) for pixels, labels, _ in eval_batches(sources[args.eval_split], **common))

    return train_linear_probe(
        model,
        train_batches,
        num_labels,
        config,
        eval_batches=_Reiterable(validation),
        accelerator=accelerator,
        global_batch_size=args.batch_size * accelerator.num_processes,
    )


def _cached_features(args, model, config, sources, common, accelerator) -> list[dict[str, Any]]:
    """Both splits' features from `--features_dir`, extracted (center crops) and stored there on the first run."""
    directory = Path(args.features_dir)
    manifest = directory / "linear_features.json"
    settings = {
        "model": str(args.model_name_or_path),
        "model_files": _fingerprint(Path(args.model_name_or_path)),
        "dataset": [args.dataset_name, args.data_files, args.image_column, args.label_column],
        "splits": [args.train_split, args.eval_split],
        "sample_limits": [args.max_train_samples, args.max_eval_samples, args.seed],
        "layout": [config.n_last_blocks, config.avgpool_patchtokens],
        "preprocessing": [common["image_size"], list(common["mean"]), list(common["std"])],
    }
    files = [directory / f"{split}.parquet" for split in settings["splits"]]  # parquet: any ids
    if manifest.is_file():
        if json.loads(manifest.read_text()) != settings:
            raise SystemExit(
                f"{directory} holds features of other settings ({manifest}): choose another --features_dir or "
                "delete it."
            )
        accelerator.print(f"Reusing the features stored in {directory}.")
        return [load_features(path) for path in files]
    stored = []
    for split, path in zip(settings["splits"], files, strict=True):
        batches = eval_batches(sources[split], **common)
        stored.append(extract_probe_features(model, batches, config, accelerator=accelerator))
        save_features(stored[-1], path)
    manifest.write_text(json.dumps(settings, indent=2))
    accelerator.print(f"Stored the features of {settings['splits']} in {directory}.")
    return stored


def _fingerprint(folder: Path) -> list[list[Any]]:
    """Name, size and modification time of a local model's files: a retrained model does not reuse old features."""
    if not folder.is_dir():
        return []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.is_file()]


def _report(args, result: LinearProbeResult, accelerator: Accelerator, mode: str) -> dict[str, Any]:
    best = result.best
    accelerator.print(result.table())
    accelerator.print(
        f"Linear probe ({mode}) on {args.dataset_name}: best top-1 {result.best_top1:.2f}% "
        f"(head {result.best_head}: base_lr {best['base_lr']:g}, weight_decay {best['weight_decay']:g}, "
        f"{len(result.grid)} heads, {args.epochs} epochs)"
    )
    summary = {"mode": mode, **result.to_dict()}
    if args.output_file and accelerator.is_main_process:
        Path(args.output_file).write_text(json.dumps(summary, indent=2))
    return summary


class _Reiterable:
    """Each iteration reads the validation split again."""

    def __init__(self, factory):
        self.factory = factory

    def __iter__(self):
        return iter(self.factory())


if __name__ == "__main__":
    main()
