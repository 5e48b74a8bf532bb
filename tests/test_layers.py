"""The package's layers point one way: the model layer knows nothing of what builds on it."""

from __future__ import annotations

import ast
from pathlib import Path

import lightseek

SRC = Path(lightseek.__file__).resolve().parent
# what builds on the model: the model layer imports none of it
ABOVE_MODEL = ("adapters", "quant", "train", "serve", "distill", "models", "eval", "cli", "quickstart", "moefy",
               "classify", "platform", "safety", "label")  # the last three: packages the open issues add


def _package(module: str) -> str | None:
    """The top-level part of lightseek a dotted module name belongs to ('model', 'fileio', ...)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lightseek" and len(parts) > 1 else None


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [file:line, ...]}}, counting imports inside functions too."""
    graph: dict[str, dict[str, list[str]]] = {}
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC)
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for target in {p for p in map(_package, names) if p is not None and p != src}:
                if (SRC / target).is_dir() or (SRC / f"{target}.py").is_file():
                    graph.setdefault(src, {}).setdefault(target, []).append(f"{rel}:{node.lineno}")
    return graph


def _reaches(graph, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, {}))
    return False


def test_the_model_layer_imports_nothing_built_on_it():
    graph = import_graph()
    bad = {pkg: where for pkg, where in graph.get("model", {}).items() if pkg in ABOVE_MODEL}
    assert not bad, f"model/ imports {bad}"


def test_no_package_imports_loop_back_into_the_model_layer():
    graph = import_graph()
    loops = [pkg for pkg in graph.get("model", {}) if _reaches(graph, pkg, "model")]
    assert not loops, f"model/ and {loops} import each other ({ {p: graph['model'][p] for p in loops} })"


def test_the_graph_sees_function_level_imports():
    """The checks above would be empty if the parser missed imports inside functions."""
    graph = import_graph()
    assert "model" in graph["adapters"] and "quant" in graph["cli"]
    assert any(":" in w for w in graph["model"].get("fileio", []))


def test_quantized_checkpoints_load_through_the_registered_format():
    from lightseek.model.checkpoint import format_loader
    from lightseek.quant.checkpoint import SECTION, load_quantized

    assert format_loader({"model": {}, SECTION: {}}) is load_quantized
    assert format_loader({"model": {}}) is None
