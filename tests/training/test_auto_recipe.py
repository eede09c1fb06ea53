"""`--recipe auto`: the choices follow from the data's and the machine's measured properties, never a name."""

import json
import os
import re
import sys
import time

import pytest
import torch
from PIL import Image

from dino_hf.cli.pretrain import parse_arguments
from dino_hf.data import load_image_dataset
from dino_hf.testing_utils import run_process_tree
from dino_hf.training.auto_recipe import DataProfile, MachineProfile, auto_recipe, sample_images
from dino_hf.training.recipes import recipe_defaults


CPU = MachineProfile(device="cpu", num_processes=1, cpu_count=2)
GPUS = MachineProfile(device="cuda", num_processes=8, cpu_count=64)


def flags(data, machine=CPU, minutes=8.0):
    choices = auto_recipe(data, machine, minutes)
    assert all(choice.reason for choice in choices)
    assert len({choice.flag for choice in choices}) == len(choices)
    return {choice.flag: choice.value for choice in choices}


def reasons(data, machine=CPU, minutes=8.0):
    return {choice.flag: choice.reason for choice in auto_recipe(data, machine, minutes)}


def small(**changes):
    return DataProfile(**{"num_images": 2000, "image_side": 64, "color": False, "labelled": True, **changes})


def test_imagenet_scale_on_gpus_is_the_papers_recipe():
    paper = recipe_defaults("vits16-100ep")
    assert flags(small(num_images=1_281_167, image_side=400, color=True), GPUS) == paper
    assert flags(small(num_images=None, image_side=400, color=True), GPUS) == paper  # a stream of unknown size
    assert flags(small(num_images=1_281_167), CPU)["arch"] == "resnet50"  # a CPU cannot train the paper's recipe


@pytest.mark.parametrize("side", [28, 48, 64, 90, 500])
def test_crops_are_sized_for_the_resnet_whatever_the_image_size(side):
    chosen = flags(small(image_side=side))
    assert (chosen["global_crops_size"], chosen["local_crops_size"]) == (64, 32)
    assert f"{side} px images: 64 px global crops" in reasons(small(image_side=side))["global_crops_size"]


def test_batch_and_precision_follow_the_device():
    assert flags(small())["per_device_train_batch_size"] == 64 and flags(small())["mixed_precision"] == "no"
    on_gpu = flags(small(), MachineProfile("cuda", 1, 8))
    assert on_gpu["per_device_train_batch_size"] == 256 and on_gpu["mixed_precision"] == "auto"


def test_schedule_length_follows_the_data_without_a_budget():
    assert flags(small(num_images=2000), minutes=None)["epochs"] == 48  # 31 steps an epoch, ~1500 steps
    assert flags(small(num_images=64_000), minutes=None)["epochs"] == 1
    assert flags(small(num_images=2000), minutes=8.0)["epochs"] == 10  # the budget sets the steps


def test_knn_monitor_only_with_labels():
    assert flags(small(labelled=True))["knn_at_start_and_end"] is True
    assert flags(small(labelled=False))["knn_at_start_and_end"] is False


def image_folder(root, color, side=40, per_class=6):
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (side, side + 8, 3 if color else 1), generator=generator).byte()
                Image.fromarray(pixels.squeeze(-1).numpy()).convert("RGB").save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("color", [True, False])
def test_data_profile_measures_size_and_colour(tmp_path, color):
    source = load_image_dataset(str(image_folder(tmp_path, color)), split="train")
    profile = DataProfile.measure(source)
    assert profile == DataProfile(num_images=12, image_side=40, color=color, labelled=True)
    assert f"{'colour' if color else 'grayscale'}" in profile.describe()
    assert len(sample_images(source, 4)) == 4


def test_cli_recipe_auto_prints_its_choices_and_the_command_line_wins(tmp_path, capsys):
    folder = image_folder(tmp_path / "data", color=False)
    argv = ["--dataset_name", str(folder), "--output_dir", str(tmp_path / "out"), "--recipe", "auto"]
    command = parse_arguments([*argv, "--time_budget_minutes", "8", "--local_crops_number", "2"])
    printed = capsys.readouterr().out
    assert "--recipe auto: 12 images, median shorter side 40 px, grayscale, labelled" in printed
    assert "--local_crops_number 4: " in printed and "(overridden: given explicitly)" in printed
    assert command.data_args.local_crops_number == 2  # the command line wins
    assert (command.data_args.global_crops_size, command.model_args.arch) == (64, "resnet50")
    assert command.training_args.time_budget_minutes == 8.0
    assert {"flag": "arch", "value": "resnet50"}.items() <= command.recipe[0].items()


@pytest.mark.skipif(
    not os.environ.get("DINO_HF_SMALL_SET"),
    reason="opt-in, 10 minutes: DINO_HF_SMALL_SET=<image folder with train/ and validation/ class subfolders> "
    "(python benchmarks/small_sets/build_small_sets.py builds several)",
)
def test_eight_minute_budget_on_a_small_set(tmp_path):
    """The README's own-images commands on a real small set: both within 10 minutes on 2 CPU cores, the run within
    10% of its budget, features clear of the random network and no collapse, the k-NN line format kept."""
    folder, out = os.environ["DINO_HF_SMALL_SET"], tmp_path / "run"
    started = time.time()
    pretraining = run_process_tree(
        [sys.executable, "-m", "dino_hf.cli.pretrain", "--dataset_name", folder, "--output_dir", str(out)]
        + ["--recipe", "auto", "--time_budget_minutes", "8", "--progress_bar", "false"],
        timeout=9 * 60,
    )
    pretrain_seconds = time.time() - started
    assert pretraining.returncode == 0, pretraining.stderr[-3000:]
    evaluation = run_process_tree(
        [sys.executable, "-m", "dino_hf.cli.knn_eval", "--model_name_or_path", str(out / "export")]
        + ["--dataset_name", folder, "--pixel_baseline"],
        timeout=10 * 60 - pretrain_seconds,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert abs(pretrain_seconds - 480) <= 48, f"an 8-minute budget took {pretrain_seconds:.0f} s"
    assert re.search(r"  k=20   top-1 +\d+\.\d\d%  top-5 +\d+\.\d\d%", evaluation.stdout)
    metrics = json.loads((out / "export" / "training_summary.json").read_text())["final_metrics"]
    assert metrics["knn_top1"] > metrics["knn_top1_at_start"] + 0.01, metrics
    assert "Possible collapse" not in pretraining.stderr  # the collapse monitor's warning (uniform or one-hot)
