"""Named recipes: every published run gives its documented flags through the CLI, and flags still override."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from dino_hf.cli.pretrain import parse_arguments
from dino_hf.training import DinoDataArguments, DinoModelArguments, DinoTrainingArguments
from dino_hf.training.recipes import RECIPES, recipe_defaults


ROOT = Path(__file__).parents[2]


def _parse(argv):
    model_args, data_args, training_args, *_ = parse_arguments(argv)
    return {**asdict(model_args), **asdict(data_args), **asdict(training_args)}


AVAILABLE = [name for name, recipe in RECIPES.items() if recipe.unavailable is None]


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_recipe_gives_its_documented_flags(name, tmp_path):
    values = _parse(["--recipe", name, "--output_dir", str(tmp_path)])
    for flag, expected in RECIPES[name].flags.items():
        assert values[flag] == expected, flag


def test_the_published_values():
    vanilla, boosted = recipe_defaults("vits16-100ep"), recipe_defaults("vits16-300ep")
    # main_dino.py's defaults: teacher temperature 0.04 without warm-up, 8 local crops, 100 epochs.
    assert (vanilla["teacher_temp"], vanilla["warmup_teacher_temp_epochs"], vanilla["local_crops_number"]) == (
        0.04,
        0,
        8,
    )
    assert (boosted["epochs"], boosted["teacher_temp"], boosted["warmup_teacher_temp_epochs"]) == (300, 0.07, 30)
    assert boosted["norm_last_layer"] is False and vanilla["norm_last_layer"] is True
    assert (recipe_defaults("vits8")["patch_size"], recipe_defaults("vitb8")["arch"]) == (8, "vit_base")
    assert recipe_defaults("vitb16")["lr"] == 0.00075 and recipe_defaults("vitb16")["freeze_last_layer"] == 3
    # The package's own defaults stay the paper's.
    assert (DinoTrainingArguments().warmup_teacher_temp, DinoTrainingArguments().teacher_temp) == (0.04, 0.07)
    assert DinoTrainingArguments().warmup_teacher_temp_epochs == 30 and DinoDataArguments().local_crops_number == 10
    assert DinoModelArguments().arch == "vit_small"


def test_flags_and_config_override_the_recipe(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"teacher_temp": 0.05, "epochs": 50}))
    values = _parse(["--recipe", "vits16-300ep", "--config", str(config), "--epochs", "10", "--patch_size", "8"])
    assert (values["epochs"], values["teacher_temp"], values["patch_size"]) == (10, 0.05, 8)
    assert values["norm_last_layer"] is False and values["warmup_teacher_temp_epochs"] == 30  # from the recipe
    # A recipe never leaks into a run that did not ask for it.
    assert _parse(["--output_dir", str(tmp_path)])["teacher_temp"] == 0.07


def test_unknown_recipes_refuse_clearly():
    with pytest.raises(ValueError, match="Unknown recipe 'vits32'.*vits16-100ep"):
        recipe_defaults("vits32")


def test_resnet50_recipe_is_the_readme_command():
    # main_dino.py --arch resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4
    # --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14
    flags = recipe_defaults("resnet50")
    assert (flags["arch"], flags["optimizer"], flags["lr"]) == ("resnet50", "sgd", 0.03)
    assert flags["weight_decay"] == flags["weight_decay_end"] == 1e-4
    assert (flags["global_crops_scale"], flags["local_crops_scale"]) == ([0.14, 1.0], [0.05, 0.14])
    assert (flags["local_crops_number"], flags["teacher_temp"], flags["out_dim"]) == (8, 0.04, 65536)


def test_docs_table_lists_every_recipe_with_its_accuracy():
    text = (ROOT / "docs" / "training.md").read_text()
    for name, recipe in RECIPES.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, name
        numbers = [float(x) for x in re.findall(r"(\d+\.\d)%", row)]
        assert numbers[:2] == [recipe.expected_knn, recipe.expected_linear], name
