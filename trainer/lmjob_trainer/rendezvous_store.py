"""`python -m lmjob_trainer.rendezvous_store --port P`: a job's c10d rendezvous store, alone.

torchrun's c10d rendezvous keeps its state in a TCPStore. By default the agent on the
endpoint's host serves it, so losing that worker loses the rendezvous and every other
worker with it. Served by this small process instead (the operator runs it in a pod of
its own, agents use `--rdzv-conf is_host=false`), any worker, rank 0 included, can die and
the rest re-rendezvous. It holds no training state: restarting it restarts the rendezvous.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import timedelta

from torch.distributed import TCPStore

from lmjob_trainer.logs import configure_logging

log = logging.getLogger("lmjob_trainer.rendezvous_store")


def serve(port: int, *, host: str = "0.0.0.0", stop: threading.Event | None = None) -> None:
    """Serve the store on `port` (all interfaces) until SIGTERM/SIGINT or `stop` is set."""
    stop = stop or threading.Event()
    store = TCPStore(
        host,
        port,
        is_master=True,
        # Agents connect as clients of the same endpoint; no fixed number of them.
        multi_tenant=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=60),
    )
    log.info("rendezvous store serving", extra={"port": store.port})
    stop.wait()
    log.info("rendezvous store stopping")
    del store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmjob_trainer.rendezvous_store")
    parser.add_argument("--port", type=int, required=True, help="TCP port to serve on")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")
    args = parser.parse_args(argv)
    configure_logging(job="rendezvous", rank=0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(args.port, host=args.host, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
