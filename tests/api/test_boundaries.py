"""Component boundaries: no `operator` package, and imports stay within each part's allowance."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()
    import operator as stdlib_operator

    assert hasattr(stdlib_operator, "itemgetter"), "stdlib operator is shadowed"


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("lmjob_api", {"torch", "kopf", "kubernetes"}),
        ("lmjob_api.crd", {"torch", "kopf", "kubernetes"}),
        ("lmjob_api.trainer_config", {"torch", "kopf", "kubernetes"}),
        ("lmjob_api.sweep_checks", {"torch", "kopf", "kubernetes", "optuna"}),
        ("lmjob_sweep.engine", {"torch", "kopf", "kubernetes"}),
        ("lmjob_operator", {"torch"}),
        ("lmjob_cli.main", {"torch", "kopf", "kubernetes"}),
        ("lmjob_trainer", {"kopf", "kubernetes"}),
        # The worker container's entrypoint fails a bad config before torch is imported.
        ("lmjob_trainer.launch", {"torch", "kopf", "kubernetes"}),
    ],
)
def test_import_boundaries(module: str, forbidden: set[str]) -> None:
    assert not (_modules_after_import(module) & forbidden)


def test_no_source_file_crosses_boundaries() -> None:
    rules = {
        "operator": ("import torch", "from torch"),
        "api": (
            "import torch",
            "from torch",
            "import kopf",
            "from kopf",
            "import kubernetes",
            "from kubernetes",
        ),
        "trainer": ("import kopf", "from kopf", "import kubernetes", "from kubernetes"),
    }
    offenders = []
    for folder, banned in rules.items():
        for path in (REPO / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                if line.strip().startswith(banned):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []


def _internal_imports(folder: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, lazy (in-function) imports included."""
    package = folder.name
    modules: dict[str, Path] = {}
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package):
                targets.add(node.module or "")
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None (depth-first search, three colours)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if (found := visit(target)) is not None:
                return found
        path.pop()
        done.add(node)
        return None

    return next((c for n in sorted(graph) if (c := visit(n)) is not None), None)


@pytest.mark.parametrize(
    "folder",
    [
        "api/lmjob_api",
        "operator/lmjob_sweep",
        "operator/lmjob_operator",
        "trainer/lmjob_trainer",
        "cli/lmjob_cli",
    ],
)
def test_no_import_cycles(folder: str) -> None:
    """Each module depends one way: model.py chooses hf_model.py, and both use causal_lm.py."""
    assert _cycle(_internal_imports(REPO / folder)) is None


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
