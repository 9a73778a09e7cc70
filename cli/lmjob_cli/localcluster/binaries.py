"""Where the Kubernetes binaries live (etcd, kube-apiserver, ...), as built by scripts/build-k8s;
`LMJOB_K8S_BIN_DIR` points elsewhere (e.g. an install without the checkout's scripts/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# The checkout this package runs from (cli/lmjob_cli/localcluster/ is three levels down).
REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s"
BIN_DIR_ENV = "LMJOB_K8S_BIN_DIR"


class BinariesMissing(RuntimeError):
    """The pinned binaries have not been built on this machine yet."""


def bin_dir() -> Path:
    if os.environ.get(BIN_DIR_ENV):
        return Path(os.environ[BIN_DIR_ENV])
    if not BUILD_SCRIPT.exists():
        raise BinariesMissing(
            f"{BUILD_SCRIPT} not found (lmjob installed without its checkout): set "
            f"{BIN_DIR_ENV} to a folder holding etcd, kube-apiserver, kube-controller-manager, "
            "kube-scheduler and kubectl"
        )
    # Ask the build script rather than repeating its version pins here.
    out = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    return Path(out.stdout.strip())


def share_dir(name: str) -> Path:
    """<cache>/share/<name>: files scripts/build-k8s copies from a tool's Go module beside
    the binaries (e.g. `prometheus-operator/crd/`, `kueue/crd/`)."""
    return bin_dir().parent / "share" / name


def find_binaries(names: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Paths of the named binaries; raises BinariesMissing naming the build command."""
    directory = bin_dir()
    found = {name: directory / name for name in names}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"Kubernetes test binaries missing from {directory}: {', '.join(missing)}. "
            f"Build them with `{BUILD_SCRIPT.relative_to(REPO_ROOT)}` "
            "(20-45 min cold on 2 cores, seconds when already built)."
        )
    return found


def pinned_k8s_version() -> str:
    """The Kubernetes release scripts/build-k8s pins, e.g. "v1.36.3"."""
    match = re.search(r'^K8S_VERSION = "(v[\d.]+)"', BUILD_SCRIPT.read_text(), re.M)
    assert match, f"K8S_VERSION not found in {BUILD_SCRIPT}"
    return match.group(1)
