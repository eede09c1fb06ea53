"""Entry points for pip users: `python -m dino_hf.cli.<name>`, the `dino-hf-*` console scripts, `examples/` wrappers."""

import configparser
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest

from dino_hf.testing_utils import run_process_tree


EXAMPLES = Path(__file__).parents[1] / "examples"
CONSOLE_SCRIPTS = {
    "dino-hf-pretrain": "dino_hf.cli.pretrain:main",
    "dino-hf-knn-eval": "dino_hf.cli.knn_eval:main",
    "dino-hf-extract-features": "dino_hf.cli.extract_features:main",
    "dino-hf-export": "dino_hf.cli.export:main",
    "dino-hf-convert": "dino_hf.cli.convert:main",
    "dino-hf-semantic-segmentation": "dino_hf.cli.semantic_segmentation:main",
}


def test_console_scripts_are_installed_and_point_at_the_cli_modules():
    scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    for name, target in CONSOLE_SCRIPTS.items():
        assert name in scripts, f"{name} missing: reinstall with `pip install -e .[dev]`"
        assert scripts[name].value == target
        main = scripts[name].load()
        # A console script exits with main()'s value: anything but None (or an int) would print it and exit 1.
        assert inspect.signature(main).return_annotation in (None, "None"), name
        # The executable lies next to the interpreter of the environment the package is installed in.
        assert (Path(sys.executable).parent / name).exists(), name


@pytest.mark.parametrize("name", ["pretrain", "knn_eval", "extract_features", "semantic_segmentation"])
def test_examples_are_thin_wrappers_of_the_package_clis(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main is importlib.import_module(f"dino_hf.cli.{name}").main


def test_python_dash_m_runs_the_pretraining_module():
    """What `accelerate launch -m dino_hf.cli.pretrain ...` runs: the module as __main__."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_process_tree(
        [sys.executable, "-m", "dino_hf.cli.pretrain", "--help"],
        timeout=120,
        cwd=Path(__file__).parent,  # the installed package, not a checkout on the path
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--momentum_teacher" in result.stdout and "--push_to_hub" in result.stdout


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
