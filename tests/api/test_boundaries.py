"""Component boundaries: no `operator` package, and imports stay within each part's allowance."""

from __future__ import annotations

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
