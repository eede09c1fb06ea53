"""What the evaluation commands share.

- k-NN, linear probe and feature export: [`add_eval_data_arguments`] (the model, dataset and preprocessing flags,
  defined once) and [`eval_batch_options`] (the keyword arguments of `eval_batches` / `probe_train_batches`);
- retrieval, copy detection and video segmentation: the model and data flags, loading the backbone with the
  normalisation it was saved with, and the JSON figures file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dino_hf.evaluation import default_image_size, load_backbone, processor_normalisation


def add_eval_data_arguments(parser: argparse.ArgumentParser, splits: dict[str, tuple[str, str | None]]) -> None:
    """The flags of the model and of the dataset the k-NN, linear-probe and feature-export commands read.

    `splits` maps each split flag to its default and help, e.g. `{"train_split": ("train", None)}`.
    """
    group = parser.add_argument_group("model and evaluation data")
    group.add_argument("--model_name_or_path", required=True, help="A DinoViTModel folder, Hub id or training run.")
    group.add_argument(
        "--dataset_name", default="embedded", help="Any source of docs/data.md ('embedded', a Hub id...)."
    )
    group.add_argument("--data_files", default=None, help="Data files for parquet/webdataset/local sources.")
    for flag, (default, help_text) in splits.items():
        group.add_argument(f"--{flag}", default=default, help=help_text)
    group.add_argument("--image_column", default=None)
    group.add_argument("--label_column", default=None)
    group.add_argument("--image_size", type=int, default=None, help="Crop size (default: the model's image_size).")
    group.add_argument("--batch_size", type=int, default=128, help="Images per process.")
    group.add_argument("--num_workers", type=int, default=4)


# The sample limits of the evaluation commands, defined once: which split each bounds.
SAMPLE_LIMITS = {
    "max_train_samples": "the training split (k-NN memory bank, linear-probe training set)",
    "max_eval_samples": "the evaluation split",
    "max_samples": "the split",
}


def add_sample_limit_arguments(parser: argparse.ArgumentParser, *flags: str) -> None:
    """`--max_train_samples`, `--max_eval_samples` or `--max_samples`: at most that many images of a split, a seeded
    subset spread evenly over it (`dino_hf.data.subsample_source`)."""
    for flag in flags:
        parser.add_argument(
            f"--{flag}",
            type=int,
            default=None,
            help=f"At most this many images of {SAMPLE_LIMITS[flag]}: a seeded subset spread evenly over it (a "
            "streamed dataset: its first ones, with a warning). Default: all.",
        )


def dataset_options(args: argparse.Namespace) -> dict:
    """`data_files`, `image_column`, `label_column`: the keyword arguments of `load_image_dataset`/`labelled_source`."""
    return {"data_files": args.data_files, "image_column": args.image_column, "label_column": args.label_column}


def eval_batch_options(args: argparse.Namespace, model, device) -> dict:
    """The keyword arguments of `eval_batches` / `probe_train_batches`: crop size (the model's unless given), the
    normalisation the model was saved with, batch size, workers and device."""
    mean, std = processor_normalisation(args.model_name_or_path)
    return {
        "image_size": args.image_size or default_image_size(model, args.model_name_or_path),
        "mean": mean,
        "std": std,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": device,
    }


def add_model_and_output_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """`--model_name_or_path`, `--data_path` (`data_help`), `--generate_demo_data`, `--output_file`, `--device`."""
    parser.add_argument("--model_name_or_path", required=True, help="a saved dino_hf folder (or Hub repo)")
    parser.add_argument("--data_path", type=Path, default=None, help=data_help)
    parser.add_argument("--generate_demo_data", type=Path, default=None, help="write a generated dataset here, use it")
    parser.add_argument("--output_file", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_data_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.data_path is None) == (args.generate_demo_data is None):
        parser.error("give exactly one of --data_path and --generate_demo_data")


def load_model(args: argparse.Namespace):
    """The backbone on `args.device`, and the `mean`/`std` keyword arguments its saved image processor states."""
    model = load_backbone(args.model_name_or_path).to(args.device)
    mean, std = processor_normalisation(args.model_name_or_path)
    return model, {"mean": mean, "std": std, "device": args.device}


def write_figures(figures: dict, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))
