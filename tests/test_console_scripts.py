"""Console scripts: setuptools' wrapper runs `sys.exit(main())`, so every `main` must return None (or an int)."""

import configparser
import importlib
import inspect
from pathlib import Path

import pytest


SETUP_CFG = Path(__file__).parents[1] / "setup.cfg"


def _console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def _entry_point(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("name", sorted(_console_scripts()))
def test_console_script_main_returns_none_or_an_int(name):
    main = _entry_point(_console_scripts()[name])
    annotation = inspect.signature(main).return_annotation
    assert annotation in (None, "None", int, "int"), f"{name}: main() -> {annotation} exits with status 1"


def test_a_console_script_entry_point_returns_none(tiny_model_folder, tmp_path):
    main = _entry_point(_console_scripts()["dino-hf-visualize-attention"])
    out = tmp_path / "maps"
    argv = ["--model_name_or_path", str(tiny_model_folder), "--output_dir", str(out), "--image_size", "32"]
    assert main(argv) is None  # sys.exit(None): exit status 0
    assert list(out.glob("*.png"))
