"""The package's layering rules, checked on the source: what imports what, and who configures logging."""

import ast
from pathlib import Path

import dino_hf


PACKAGE = Path(dino_hf.__file__).parent
TESTS = Path(__file__).parent
LOGGING_ALLOWED: set[str] = set()  # no library module configures logging


def _calls_basic_config(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Attribute) and node.attr == "basicConfig" for node in ast.walk(tree))


def _imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module or "")
            modules.add(prefix)
    return modules


def test_only_command_lines_configure_the_root_logger():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.parts[len(PACKAGE.parts)] != "cli"
        and str(path.relative_to(PACKAGE)) not in LOGGING_ALLOWED
        and _calls_basic_config(path)
    ]
    assert offenders == [], f"library modules configure the root logger: {offenders}"


def test_export_and_conversion_do_not_import_evaluation():
    """The image processor lives beside the model; saving a model needs no evaluation code (the export's optional
    attention picture imports the attention maps when it draws them)."""
    assert not [m for m in _imported_modules(PACKAGE / "image_processing_dino.py") if "evaluation" in m]
    assert not [m for m in _imported_modules(PACKAGE / "conversion.py") if "evaluation" in m]
    assert not [m for m in _imported_modules(PACKAGE / "training" / "export.py", True) if "evaluation" in m]


def test_tests_import_no_benchmark_scripts():
    for path in TESTS.rglob("*.py"):
        imported = _imported_modules(path)
        assert not [m for m in imported if m.split(".")[0].startswith(("bench_", "check_", "benchmarks"))], path
