"""The kept-logs record's rules: key names, tail bounds, what is dropped first, what is shown."""

from __future__ import annotations

import pytest

from lmjob_api.kept_logs import (
    DROPPED_MARK,
    MIN_TAIL_BYTES,
    TAIL_BYTES,
    TOTAL_BYTES,
    KeptKey,
    bound_tail,
    build_kept_data,
    logs_hint,
    parse_key,
    select_kept,
    tail_bytes,
)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("worker-0.attempt-0.log", KeptKey(0, 0)),
        ("worker-12.attempt-3.failed.log", KeptKey(12, 3, failed=True)),
        ("trainer.yaml", None),
        ("worker-x.attempt-0.log", None),
        ("worker-1.attempt-2.log.bak", None),
    ],
)
def test_keys_round_trip(key: str, parsed: KeptKey | None) -> None:
    assert parse_key(key) == parsed
    if parsed is not None:
        assert parsed.key == key


@pytest.mark.parametrize(
    ("workers", "size"),
    [(1, TAIL_BYTES), (6, TAIL_BYTES), (48, TOTAL_BYTES // 96), (10_000, MIN_TAIL_BYTES)],
)
def test_tail_size_shrinks_with_the_job(workers: int, size: int) -> None:
    assert tail_bytes(workers) == size
    if workers * 2 * size <= TOTAL_BYTES:  # two attempts of every worker fit
        assert MIN_TAIL_BYTES <= size <= TAIL_BYTES


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short\n", 100, "short\n"),
        ("a" * 50 + "\nlast line\n", len(DROPPED_MARK) + 12, DROPPED_MARK + "last line\n"),
        # No line start in the room left: the end of the last line.
        ("a" * 50 + "\nlast line\n", len(DROPPED_MARK) + 8, DROPPED_MARK + "st line\n"),
        # A cut inside a multi-byte character drops its broken start.
        ("é" * 40, len(DROPPED_MARK) + 5, DROPPED_MARK + "éé"),
    ],
    ids=["fits", "cut at a line", "inside the last line", "cut inside a character"],
)
def test_bound_tail(text: str, limit: int, expected: str) -> None:
    bounded = bound_tail(text, limit)
    assert bounded == expected
    assert len(bounded.encode()) <= max(limit, len(text.encode()))


def test_a_new_tail_replaces_the_attempts_old_one_and_foreign_keys_go() -> None:
    current = {"worker-0.attempt-1.log": "old", "notes": "x"}
    new = build_kept_data(current, {KeptKey(0, 1, failed=True): "new"})
    assert new == {"worker-0.attempt-1.failed.log": "new"}


def test_over_budget_oldest_attempts_go_first_then_unfailed_high_indexes() -> None:
    tail = "x" * 100
    current = {KeptKey(w, 0).key: tail for w in range(2)}
    additions = {KeptKey(0, 1): tail, KeptKey(1, 1): tail, KeptKey(2, 1, failed=True): tail}
    size = len(KeptKey(2, 1, failed=True).key) + 100
    # Room for three: attempt 0 goes, the newest attempt stays whole.
    assert set(build_kept_data(current, additions, budget=3 * size)) == {
        "worker-0.attempt-1.log",
        "worker-1.attempt-1.log",
        "worker-2.attempt-1.failed.log",
    }
    # Room for two: the failed worker outranks a higher index's clean end.
    assert set(build_kept_data(current, additions, budget=2 * size)) == {
        "worker-0.attempt-1.log",
        "worker-2.attempt-1.failed.log",
    }


def test_the_record_stays_under_its_budget() -> None:
    tail = "y" * TAIL_BYTES
    additions = {KeptKey(w, a): tail for w in range(4) for a in range(8)}
    kept = build_kept_data({}, additions)
    assert sum(len(k) + len(v) for k, v in kept.items()) <= TOTAL_BYTES
    assert {parse_key(k).attempt for k in kept} == {7, 6, 5}  # type: ignore[union-attr]


KEYS = ["worker-0.attempt-0.failed.log", "worker-0.attempt-1.log", "worker-1.attempt-0.log"]


@pytest.mark.parametrize(
    ("worker", "shown"),
    [(0, "worker-0.attempt-1.log"), (1, "worker-1.attempt-0.log"), (2, None)],
)
def test_previous_selects_the_latest_kept_attempt(worker: int, shown: str | None) -> None:
    assert select_kept(KEYS, worker) == shown
    assert select_kept(["trainer.yaml"], worker) is None


def test_the_hint_is_a_command() -> None:
    assert logs_hint("e2e", 0) == "lmjob logs e2e --previous"
    assert logs_hint("e2e", 3) == "lmjob logs e2e --worker 3 --previous"
