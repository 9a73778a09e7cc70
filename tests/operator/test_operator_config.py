"""The operator's own configuration (environment) and command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmjob_operator.config import DEFAULT_TRAINER_IMAGE, OperatorConfig, load_config
from tests.operator.harness import SOURCE_DIRS

# (case id, environment, expected config or the variable named in the error)
CASES = [
    ("defaults", {}, OperatorConfig()),
    (
        "everything set",
        {
            "LMJOB_TRAINER_IMAGE": "reg/t:1",
            "LMJOB_RENDEZVOUS_IMAGE": "reg/r:1",
            "LMJOB_RESYNC_SECONDS": "5",
            "LMJOB_SCRAPE_TIMEOUT_SECONDS": "0.5",
            "LMJOB_FORCE_DELETE_AFTER_SECONDS": "30",
            "LMJOB_CREATE_CONCURRENCY": "4",
        },
        OperatorConfig("reg/t:1", "reg/r:1", 5.0, 0.5, 30.0, 4),
    ),
    (
        "empty image means default",
        {"LMJOB_TRAINER_IMAGE": ""},
        OperatorConfig(DEFAULT_TRAINER_IMAGE),
    ),
    ("not a number", {"LMJOB_RESYNC_SECONDS": "soon"}, "LMJOB_RESYNC_SECONDS"),
    ("not positive", {"LMJOB_FORCE_DELETE_AFTER_SECONDS": "0"}, "LMJOB_FORCE_DELETE_AFTER_SECONDS"),
]


@pytest.mark.parametrize(("env", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_config(env: dict[str, str], expected: OperatorConfig | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            load_config(env)
    else:
        assert load_config(env) == expected


def test_store_image_defaults_to_trainer_image() -> None:
    assert OperatorConfig("reg/t:1").rendezvous_store_image == "reg/t:1"
    assert OperatorConfig("reg/t:1", "reg/r:1").rendezvous_store_image == "reg/r:1"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(SOURCE_DIRS), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmjob_operator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_help_lists_the_flags() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for flag in ("--namespace", "--liveness", "--metrics-port", "--standalone", "--peering-name"):
        assert flag in out.stdout


def test_bad_environment_is_one_line() -> None:
    out = _run("--standalone", env={"LMJOB_RESYNC_SECONDS": "soon"})
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "lmjob-operator: LMJOB_RESYNC_SECONDS must be a number of seconds, got 'soon'"
    )
