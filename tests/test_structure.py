"""The package's layering rules, checked on the source: the import graph has no circle and no arrow from a lower
layer to a higher one (docs/architecture.md), what conversion and export import, who configures logging."""

import ast
from pathlib import Path

import dino_hf


PACKAGE = Path(dino_hf.__file__).parent
TESTS = Path(__file__).parent
LOGGING_ALLOWED: set[str] = set()  # no library module configures logging

# Layers, lowest first: a module may import its own layer and lower ones. The top-level modules are the model side
# and what every layer shares to save and publish a model (configuration_dino, modeling_dino, image_processing_dino,
# hub, conversion, model_card, publishing, distributed); testing_utils serves tests and benchmarks only.
LAYERS = {"core": 0, "data": 1, "evaluation": 2, "training": 2, "cli": 3, "testing_utils": 3}


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(module: str, path: Path) -> set[str]:
    """Absolute names of everything `path` imports, at the top or inside functions (a lazy import is an arrow too),
    and of the package modules it reaches by name through `sys.modules` or `importlib`."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names.update(f"{target}.{alias.name}" for alias in node.names)
        elif _reaches_a_module_by_name(node):
            names.add(node.args[0].value if isinstance(node, ast.Call) else node.slice.value)
    return names


def _reaches_a_module_by_name(node: ast.AST) -> bool:
    """`sys.modules.get("dino_hf.x")`, `sys.modules["dino_hf.x"]` or `importlib.import_module("dino_hf.x")`."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        source = ast.unparse(node.func)
        return source in ("sys.modules.get", "importlib.import_module", "import_module")
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return ast.unparse(node.value) == "sys.modules"
    return False


def import_graph() -> dict[str, set[str]]:
    """`module -> modules of dino_hf it imports` (a name imported from a module is an arrow to that module)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(module, path):
            while name and name not in modules:  # `from .x import function` -> the module .x
                name = name.rpartition(".")[0]
            if name.startswith("dino_hf") and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], LAYERS["core"]) if len(parts) > 1 and parts[1] in LAYERS else LAYERS["core"]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                component.append(stack.pop())
                if component[-1] == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert circles(graph) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    graph = import_graph()
    upward = sorted((a, b) for a, targets in graph.items() for b in targets if layer(a) < layer(b))
    assert upward == [], f"imports from a lower layer to a higher one (LAYERS): {upward}"


def test_the_graph_sees_every_kind_of_arrow(tmp_path):
    """The checks above are only as good as the graph: relative, lazy and sys.modules arrows are all in it."""
    graph = import_graph()
    reaching = tmp_path / "reaching.py"
    reaching.write_text('import sys\n\ndef f():\n    return sys.modules.get("dino_hf.hub")\n')
    assert "dino_hf.hub" in _imported_names("dino_hf.reaching", reaching)
    assert "dino_hf.training.step" in graph["dino_hf.training.trainer"]  # from .step import build_training_step
    assert "dino_hf.evaluation.knn_monitor" in graph["dino_hf.training.trainer"]  # inside a function
    assert "dino_hf.data" in graph["dino_hf.evaluation.batches"]  # from ..data import (package)
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("dino_hf.hub") == 0 and layer("dino_hf.data.loaders") == 1 and layer("dino_hf.cli.export") == 3


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
