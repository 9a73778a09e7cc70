"""Running helm for the install-path tests (isolated helm home), and reading its renders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lmjob"

Render = Callable[..., list[dict[str, Any]]]


def run_helm(
    helm: Path,
    *args: str,
    kubeconfig: Path | None = None,
    check: bool = True,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run helm with its caches and config under `home` (never the user's ~/.config/helm)."""
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    if home is not None:
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config")):
            env[var] = str(home / sub)
        env["HELM_DATA_HOME"] = str(home / "data")
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def write_values(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / f"values-{abs(hash(yaml.safe_dump(values)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects of one kind (and name)."""
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
