"""Entry points for pip users: `python -m dino_hf.cli.<name>`, the `dino-hf-*` console scripts, `examples/` wrappers."""

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).parents[1] / "examples"
CONSOLE_SCRIPTS = {
    "dino-hf-pretrain": "dino_hf.cli.pretrain:main",
    "dino-hf-knn-eval": "dino_hf.cli.knn_eval:main",
    "dino-hf-extract-features": "dino_hf.cli.extract_features:main",
    "dino-hf-export": "dino_hf.cli.export:main",
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


@pytest.mark.parametrize("name", ["pretrain", "knn_eval", "extract_features"])
def test_examples_are_thin_wrappers_of_the_package_clis(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main is importlib.import_module(f"dino_hf.cli.{name}").main


def test_python_dash_m_runs_the_pretraining_module():
    """What `accelerate launch -m dino_hf.cli.pretrain ...` runs: the module as __main__."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dino_hf.cli.pretrain", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,  # the installed package, not a checkout on the path
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--momentum_teacher" in result.stdout and "--push_to_hub" in result.stdout
