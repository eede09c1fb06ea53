"""What the retrieval, copy-detection and video-segmentation commands share: the model and data flags, loading the
backbone with the normalisation it was saved with, and the JSON figures file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dino_hf.evaluation import load_backbone
from dino_hf.image_processing_dino import processor_normalisation


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
