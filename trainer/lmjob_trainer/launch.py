"""`python -m lmjob_trainer.launch -- <torchrun args>`: a worker container's entrypoint.

It makes a configuration error end the container at once with exit code 78
(lmjob_api.exit_codes.CONFIG_ERROR), which the operator never retries, instead of torchrun
restarting the workers PET_MAX_RESTARTS times and exiting 1:

1. Before torch is imported (seconds saved): when $LMJOB_CONFIG names the built-in
   trainer's config, load and validate it and check that its data source exists; a
   problem goes to stderr and the termination log (lmjob_api.termination) and the
   container exits 78.
2. Otherwise run `python -m torch.distributed.run <args>` as a child process, with
   $LMJOB_CONFIG_ERROR_FILE naming a marker file. A worker process that exits with
   CONFIG_ERROR writes the marker first, its one-line error inside (`mark_config_error`:
   the built-in trainer does; a program of your own under spec.command may too). Seeing
   it (checked every POLL_SECONDS), the launcher stops torchrun — SIGTERM, then SIGKILL to
   torchrun and its workers after GRACE_SECONDS — and exits 78. A loss that turned NaN
   (lmjob_api.exit_codes.NON_FINITE, 79) is reported the same way, with its own code.
3. Otherwise exit with torchrun's code (128+N when a signal N ended it). SIGTERM and
   SIGINT are passed on to torchrun, which passes them to the workers (checkpoint, then exit).

Imports no torch; the operator sets $LMJOB_CONFIG_ERROR_FILE (api/lmjob_api/env.py), and
without it the marker lives in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from lmjob_api import termination
from lmjob_api.env import CONFIG_ERROR_FILE_ENV
from lmjob_api.exit_codes import CONFIG_ERROR, is_permanent
from lmjob_api.trainer_config import load_trainer_config
from lmjob_api.validation import ManifestError
from lmjob_trainer.preflight import check_data_source

POLL_SECONDS = 0.2
GRACE_SECONDS = 5.0
"""How long torchrun gets to stop its workers: they may be blocked in a collective with
the process that failed, which only a SIGKILL ends."""
CONFIG_ENV = "LMJOB_CONFIG"


def config_problems(path: str) -> list[str]:
    """Every problem the trainer would find at start-up in the config at `path` without
    torch: the config's own rules, and a missing local data source (admission cannot see
    files). Empty when none."""
    try:
        config = load_trainer_config(path)
    except ManifestError as err:
        return [str(p) for p in err.problems]
    except OSError as err:
        return [str(err)]
    return [str(p) for p in check_data_source(config)]


def config_error_message(problems: list[str]) -> str:
    """The one line the operator shows in the job's Failed condition."""
    return "cannot run this config: " + "; ".join(problems)


def write_error_message(error: str) -> None:
    """Put `error` into the termination message ($LMJOB_TERMINATION_LOG) unless a process
    of the pod already left one there; stages written before are kept."""
    path = os.environ.get(termination.PATH_ENV)
    if not path:
        return
    target = Path(path)
    with contextlib.suppress(OSError, ValueError):
        text = target.read_text(errors="replace") if target.exists() else ""
        if termination.decode_error(text):
            return
        target.write_text(termination.encode_stages(termination.decode_stages(text) or [], error))


def mark_config_error(error: str, code: int = CONFIG_ERROR) -> None:
    """For a worker process about to exit with a permanent code (CONFIG_ERROR, NON_FINITE):
    tell the launcher (if any) not to let torchrun restart it. The marker holds the code on
    its first line and the one-line error after it; written whole (a rename), so the
    launcher never reads half of it."""
    path = os.environ.get(CONFIG_ERROR_FILE_ENV)
    if not path:
        return
    target = Path(path)
    with contextlib.suppress(OSError):
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        partial.write_text(f"{code}\n{error}")
        partial.replace(target)


def read_marker(text: str) -> tuple[int, str]:
    """(exit code, error) of a marker; a program of your own may write the error alone,
    which reads as a configuration error."""
    first, _, rest = text.strip().partition("\n")
    if first.isdigit() and is_permanent(int(first)):
        return int(first), rest.strip() or "a worker failed permanently"
    return CONFIG_ERROR, text.strip() or "a worker reported a configuration error"


def report_config_error(error: str) -> int:
    """Termination message and marker for a configuration error; returns CONFIG_ERROR."""
    write_error_message(error)
    mark_config_error(error)
    return CONFIG_ERROR


def descendants(pid: int) -> list[int]:
    """Every living process below `pid`, from /proc (torchrun's workers run in sessions of
    their own, so a process group does not reach them). Also the local node's, for a pod."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # The command name may hold spaces and parentheses: fields follow the last ')'.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            out.append(child)
            pending.append(child)
    return out


def _stop(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to torchrun; after `grace` seconds, SIGKILL to it and every process below it."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    for pid in [*descendants(child.pid), child.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child.wait()


def supervise(child: subprocess.Popen[bytes], marker: Path, grace: float = GRACE_SECONDS) -> int:
    """Wait for torchrun, stopping it as soon as a worker marks a configuration error;
    returns the launcher's exit code."""
    while child.poll() is None and not marker.exists():
        time.sleep(POLL_SECONDS)
    if marker.exists():
        if child.poll() is None:
            _stop(child, grace)
        code, error = read_marker(marker.read_text(errors="replace"))
        write_error_message(error)
        print(f"lmjob_trainer.launch: {error}", file=sys.stderr)
        return code
    code = child.returncode
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    config = os.environ.get(CONFIG_ENV)
    if config and (problems := config_problems(config)):
        for problem in problems:
            print(f"lmjob_trainer.launch: {config}: {problem}", file=sys.stderr)
        write_error_message(config_error_message(problems))
        return CONFIG_ERROR

    marker_path = os.environ.get(CONFIG_ERROR_FILE_ENV)
    if not marker_path:
        marker_path = str(Path(tempfile.mkdtemp(prefix="lmjob-launch-")) / "config-error")
    marker = Path(marker_path)
    marker.unlink(missing_ok=True)
    # Its own session: a terminal's Ctrl-C reaches torchrun once, through the forwarding below.
    child = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        env={**os.environ, CONFIG_ERROR_FILE_ENV: str(marker)},
        start_new_session=True,
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return supervise(child, marker)


if __name__ == "__main__":
    sys.exit(main())
