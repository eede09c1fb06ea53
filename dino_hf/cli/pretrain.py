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
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from torch.distributed.elastic.multiprocessing.errors import record
from transformers import HfArgumentParser

from ..evaluation.knn import PIXEL_BASELINE_SIZE
from ..training import (
    DEMO_RECIPE,
    DinoDataArguments,
    DinoModelArguments,
    DinoTrainingArguments,
    pretrain,
)
from ..training.auto_recipe import Choice, DataProfile, MachineProfile, auto_recipe
from ..training.recipes import RECIPES, recipe_defaults
from ..training.trainer import load_source, process_start_time
from . import configure_logging


ARGUMENT_CLASSES = (DinoModelArguments, DinoDataArguments, DinoTrainingArguments)


class PretrainCommand(NamedTuple):
    """The parsed command line: the three argument dataclasses, whether it is the no-argument demo, and the
    `--recipe auto` choices (`{"flag", "value", "reason"}` each; None for other recipes)."""

    model_args: DinoModelArguments
    data_args: DinoDataArguments
    training_args: DinoTrainingArguments
    demo: bool
    recipe: list[dict[str, Any]] | None = None


def parse_arguments(argv: list[str]) -> PretrainCommand:
    """Flags from (lowest to highest) the demo recipe (no arguments at all) or `--recipe`, `--config`, the command
    line. `--recipe auto` first parses the rest to find the data, profiles it and the machine, then takes the
    automatic recipe's flags as its defaults."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--config", help="A YAML or JSON file of flag values; flags given on the command line win.")
    parser.add_argument(
        "--recipe",
        help=f"A published run's flags ({', '.join(RECIPES)}), or auto: chosen from the data and the machine "
        "(docs/training.md).",
    )
    demo = not argv
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config")
    config_parser.add_argument("--recipe")
    known, _ = config_parser.parse_known_args(argv)
    defaults = dict(DEMO_RECIPE) if demo else {}
    if known.recipe and known.recipe != "auto":  # below --config and the command line
        defaults.update(recipe_defaults(known.recipe))
    file_defaults = load_config_file(known.config) if known.config else {}
    known_fields = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)} | {"config", "recipe"}
    unknown = sorted(set(file_defaults) - known_fields)
    if unknown:
        raise SystemExit(f"Unknown keys in {known.config}: {unknown}")
    parsed = _parse(parser, argv, {**defaults, **file_defaults})
    recipe = None
    if known.recipe == "auto":
        choices = choose_auto_recipe(parsed[1], parsed[2], given=_given_flags(argv) | set(file_defaults))
        recipe = [dataclasses.asdict(choice) for choice in choices]
        parsed = _parse(parser, argv, {**{c.flag: c.value for c in choices}, **file_defaults})
    return PretrainCommand(*parsed, demo, recipe)


def _parse(parser: HfArgumentParser, argv: list[str], defaults: dict) -> tuple:
    parser.set_defaults(**defaults)
    # The extra --config/--recipe flags come back as a namespace between the dataclasses and the leftover strings.
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    return tuple(parsed[:3])


def _given_flags(argv: list[str]) -> set[str]:
    return {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}


def choose_auto_recipe(
    data_args: DinoDataArguments, training_args: DinoTrainingArguments, given: set[str] = frozenset()
) -> list[Choice]:
    """Profile the training data and the machine, and print (on the first process) the automatic recipe's choices;
    flags in `given` (the command line's, the config file's) win over them and are marked so."""
    data = DataProfile.measure(load_source(data_args))
    machine = MachineProfile.detect()
    choices = auto_recipe(data, machine, training_args.time_budget_minutes)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"--recipe auto: {data.describe()}; {machine.num_processes} {machine.device} process(es), "
            f"{machine.cpu_count} CPU cores. Choices:"
        )
        for choice in choices:
            print(choice.line() + (" (overridden: given explicitly)" if choice.flag in given else ""))
    return choices


def load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


@record  # under torchrun: the error and traceback of a failing process go into the launcher's failure report
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args, demo, recipe = parse_arguments(sys.argv[1:] if argv is None else argv)
    configure_logging()  # the program, not the library, configures logging
    if demo:
        print("No arguments: running the offline demo recipe (see docs/training.md). Use --help for all flags.")
    start = time.perf_counter()
    result = pretrain(model_args, data_args, training_args, recipe=recipe)
    if result.export_dir is None:
        return  # not the main process of a run of many: it exported nothing and has nothing to add
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"Finished {result.global_step} steps in {minutes}m{seconds:02d}s; exported model: {result.export_dir}")
    if training_args.time_budget_minutes is not None:
        wall = time.time() - process_start_time()
        print(
            f"Whole run, imports and data preparation included: {wall / 60:.2f} of the "
            f"{training_args.time_budget_minutes:g}-minute budget ({100 * wall / 60 / training_args.time_budget_minutes:.0f}%)."
        )
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
