"""A real Prometheus for tests: the server scripts/build-k8s builds from its Go module, on a
free loopback port with a generated config of static scrape targets, queried through its
HTTP API.

Static targets stand in for what the prometheus-operator would discover from lmjob's
monitors: `honor_labels` as the PodMonitor and ServiceMonitor set it (the trainer's own
`job` label is the LargeModelJob's name), and the `namespace` label the PodMonitor attaches
to every pod's series.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmjob_cli.localcluster.binaries import BinariesMissing, find_binaries, share_dir

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Target:
    """One scrape job of one static target."""

    name: str
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = True


def build_config(
    targets: list[Target], *, interval_s: float, rule_files: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """prometheus.yml: every target scraped (and the rules evaluated) every `interval_s`."""
    interval = f"{int(interval_s * 1000)}ms"
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": t.name,
                "honor_labels": t.honor_labels,
                "static_configs": [{"targets": [t.address], "labels": t.labels}],
            }
            for t in targets
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    """The server answered a query with an error."""


class Prometheus:
    """`prometheus` as a subprocess; `start()` returns once it is ready, `stop()` ends it."""

    def __init__(
        self,
        workdir: Path,
        targets: list[Target],
        *,
        interval_s: float = 1.0,
        rule_files: tuple[Path, ...] = (),
    ) -> None:
        self.binary = find_binaries(["prometheus"])["prometheus"]
        self.workdir = workdir
        self.config = build_config(targets, interval_s=interval_s, rule_files=rule_files)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.port = free_port()
        log = (self.workdir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self.binary), f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self._proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; list values repeat the parameter (`match[]`)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: its series."""
        return self.api("query", query=expr)["result"]

    def query_range(
        self, expr: str, start: float, end: float, step_s: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query, as a Grafana panel runs it over the dashboard's time range."""
        return self.api("query_range", query=expr, start=start, end=end, step=step_s)["result"]

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """A dashboard variable's `label_values(match, label)`."""
        return self.api(f"label/{label}/values", **{"match[]": [match]}, start=start, end=end)

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]


def monitoring_crd_files(*plurals: str) -> list[Path]:
    """prometheus-operator's own CRD files (`podmonitors`, `prometheusrules`, ...), as
    scripts/build-k8s copied them from its Go module."""
    folder = share_dir("prometheus-operator") / "crd"
    files = [folder / f"monitoring.coreos.com_{plural}.yaml" for plural in plurals]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise BinariesMissing(
            f"prometheus-operator CRDs missing: {', '.join(missing)}; run scripts/build-k8s"
        )
    return files
