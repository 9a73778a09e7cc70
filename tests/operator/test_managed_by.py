"""spec.managedBy: which jobs the operator runs, that its job handlers skip the others, and
that it says once that it leaves one alone."""

from __future__ import annotations

from typing import Any

import pytest

from lmjob_cli.cluster import format_status
from lmjob_operator.managed_by import is_ours
from lmjob_operator.registry import Registry


@pytest.mark.parametrize(
    ("spec", "ours"),
    [
        (None, True),
        ({}, True),
        ({"workers": {"replicas": 2}}, True),
        ({"managedBy": "lmjob.dev/operator"}, True),
        ({"managedBy": "kueue.x-k8s.io/multikueue"}, False),
        ({"managedBy": "example.com/my-controller"}, False),
        # Near misses of our own name are someone else's: only the exact value is ours.
        ({"managedBy": "lmjob.dev/operator/"}, False),
        ({"managedBy": "lmjob.dev/Operator"}, False),
    ],
)
def test_is_ours(spec: dict[str, Any] | None, ours: bool) -> None:
    assert is_ours(spec) is ours


def test_leaving_a_job_alone_is_logged_once_per_incarnation() -> None:
    registry = Registry()
    seen = [
        registry.note_managed_elsewhere("uid-1", gone=False),  # first event: log
        registry.note_managed_elsewhere("uid-1", gone=False),  # any later event: quiet
        registry.note_managed_elsewhere("uid-2", gone=False),  # another job
        registry.note_managed_elsewhere("uid-1", gone=True),  # deleted: forgotten
        registry.note_managed_elsewhere("uid-1", gone=False),
    ]
    assert seen == [True, False, True, False, True]
    assert registry.managed_elsewhere == {"uid-1", "uid-2"}


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ({"managedBy": "kueue.x-k8s.io/multikueue"}, True),
        ({"managedBy": "lmjob.dev/operator"}, False),
        ({}, False),
    ],
)
def test_cli_status_of_a_job_without_status(spec: dict[str, Any], shown: bool) -> None:
    # A job another controller runs may have no status at all: the display must still work.
    text = format_status({"metadata": {"name": "gpt", "namespace": "ml"}, "spec": spec})
    assert "Phase:       Pending" in text
    assert ("Managed by:  kueue.x-k8s.io/multikueue" in text) is shown


def test_job_handlers_filter_out_jobs_another_controller_runs() -> None:
    # The handlers as registered with kopf: the daemon (pods, Workload, status, finalizer) and
    # the spec-change handler skip a foreign job; only the log-once event handler takes it.
    import kopf

    import lmjob_operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    foreign, own = {"managedBy": "kueue.x-k8s.io/multikueue"}, {"managedBy": "lmjob.dev/operator"}
    job_handlers = {
        h.id: h
        for h in [*registry._spawning.get_all_handlers(), *registry._changing.get_all_handlers()]
        if h.selector is not None and h.selector.any_name == "largemodeljobs"
    }
    assert {"job_loop", "job_changed"} <= {i.split("/")[0] for i in job_handlers}
    for handler in job_handlers.values():
        assert handler.when(spec=own) and not handler.when(spec=foreign), handler.id
    watcher = next(
        h for h in registry._watching.get_all_handlers() if h.id == "job_managed_elsewhere"
    )
    assert watcher.when(spec=foreign) and not watcher.when(spec=own)
