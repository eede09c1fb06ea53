"""Pretrain DINO.

    accelerate launch -m dino_hf.cli.pretrain --dataset_name ILSVRC/imagenet-1k --arch vit_small --patch_size 16 \
        --per_device_train_batch_size 64 --epochs 100 --output_dir outputs/dino-vits16

    dino-hf-pretrain --config my_run.yaml --lr 0.001     # a YAML/JSON file, flags override it

(`examples/pretrain.py` in a clone is the same program; `accelerate launch examples/pretrain.py ...` works too.)

With no arguments at all it runs the offline demo: a small ViT on the package's generated dataset, about five
minutes on a 2-core CPU, ending with the k-NN accuracy of the trained features next to that of random ones.
Every flag is explained by `--help`; docs/training.md is the guide.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from transformers import HfArgumentParser

from ..evaluation.knn import PIXEL_BASELINE_SIZE
from ..training import (
    DEMO_RECIPE,
    DinoDataArguments,
    DinoModelArguments,
    DinoTrainingArguments,
    pretrain,
)
from ..training.recipes import RECIPES, recipe_defaults
from . import configure_logging


ARGUMENT_CLASSES = (DinoModelArguments, DinoDataArguments, DinoTrainingArguments)


def parse_arguments(argv: list[str]) -> tuple[DinoModelArguments, DinoDataArguments, DinoTrainingArguments, bool]:
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--config", help="A YAML or JSON file of flag values; flags given on the command line win.")
    parser.add_argument("--recipe", help=f"A published run's flags ({', '.join(RECIPES)}; docs/training.md).")
    demo = not argv
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config")
    config_parser.add_argument("--recipe")
    known, _ = config_parser.parse_known_args(argv)
    defaults = dict(DEMO_RECIPE) if demo else {}
    if known.recipe:  # below --config and the command line
        defaults.update(recipe_defaults(known.recipe))
    if known.config:
        defaults.update(load_config_file(known.config))
    known_fields = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)} | {"config", "recipe"}
    unknown = sorted(set(defaults) - known_fields)
    if unknown:
        raise SystemExit(f"Unknown keys in {known.config}: {unknown}")
    parser.set_defaults(**defaults)
    # The extra --config flag comes back as a namespace between the dataclasses and the leftover strings.
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    model_args, data_args, training_args = parsed[:3]
    return model_args, data_args, training_args, demo


def load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args, demo = parse_arguments(sys.argv[1:] if argv is None else argv)
    configure_logging()  # the program, not the library, configures logging
    if demo:
        print("No arguments: running the offline demo recipe (see docs/training.md). Use --help for all flags.")
    start = time.perf_counter()
    result = pretrain(model_args, data_args, training_args)
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"Finished {result.global_step} steps in {minutes}m{seconds:02d}s; exported model: {result.export_dir}")
    knn = [r for r in result.history if "knn_top1" in r]
    if knn:
        start, end = knn[0], knn[-1]
        print(
            f"k-NN top-1 on {data_args.knn_eval_split}: random init (step {start['step']}) "
            f"{100 * start['knn_top1']:.1f}%  ->  trained (step {end['step']}) {100 * end['knn_top1']:.1f}%"
        )
    pixels = result.final_metrics.get("pixel_knn_top1")
    if pixels is not None:
        print(
            f"k-NN top-1 of the raw pixels of the same images ({PIXEL_BASELINE_SIZE} x {PIXEL_BASELINE_SIZE}, "
            f"centred): {100 * pixels:.1f}%"
        )


if __name__ == "__main__":
    main()
