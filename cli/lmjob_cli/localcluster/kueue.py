"""Kueue's controller manager run as a process against a local control plane (the tests'
`kueue` fixture), with the CRDs and webhooks of the same release.

scripts/build-k8s builds the `kueue` binary and copies the release's CRDs and webhook
manifests to <cache>/share/kueue/. A cluster install reaches the webhooks through a
Service and gets certificates from cert-manager or Kueue's own cert controller; here the
API server dials `https://127.0.0.1:<port>/<path>` directly, trusting a throwaway CA
(certs.build_webhook_serving) through each configuration's caBundle.

Kueue's internal cert management stays on (with it off, v0.17.0 insists on a metrics cert
under /etc/kueue/metrics/certs, a path a test cannot write): its Secret is seeded with our
CA and a serving cert valid for both 127.0.0.1 and the Service name Kueue expects, long-lived
enough (a year; cert-controller renews anything expiring within 90 days) that Kueue keeps
it and only re-injects the same CA.

Only the webhooks of the kueue.x-k8s.io objects and of the enabled integrations are
installed: Kueue answers webhooks of disabled integrations too, but every pod or Job
creation in the shared test cluster would then wait on it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmjob_cli.localcluster.binaries import bin_dir, find_binaries
from lmjob_cli.localcluster.certs import KeyPair, build_webhook_serving, issue_client_cert
from lmjob_cli.localcluster.controlplane import (
    LOOPBACK,
    Component,
    ControlPlane,
    ControlPlaneError,
    _free_ports,
    _tail,
)
from lmjob_cli.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig

log = logging.getLogger(__name__)
# libyaml's loader when PyYAML has it: Kueue's CRDs take seconds with the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KUEUE_NAMESPACE = "kueue-system"
# Kueue's cert manager (open-policy-agent/cert-controller) keys: the Secret it reads, the
# Service whose DNS name the serving cert must carry, and its CA's name.
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
CA_NAME = "kueue-ca"
CERT_VALIDITY = dt.timedelta(days=365)
KUEUE_GROUP = "kueue.x-k8s.io"
# Kueue's user: its own name in audit events, in system:masters so no RBAC is needed
# (Kueue's ClusterRole is Kueue's concern; lmjob's own RBAC is tested elsewhere).
KUEUE_USER = "kueue-controller-manager"
# The webhooks each built-in integration registers, as (API group, resource).
FRAMEWORK_RESOURCES: dict[str, tuple[str, str]] = {
    "batch/job": ("batch", "jobs"),
    "pod": ("", "pods"),
    "deployment": ("apps", "deployments"),
    "statefulset": ("apps", "statefulsets"),
}
# Kueue's kustomization keeps these webhooks out of system namespaces; so do we.
SYSTEM_NAMESPACE_EXEMPT = {"pods", "deployments", "statefulsets"}
# CRDs whose versions (v1beta1, v1beta2) Kueue converts (config/components/crd/patches).
CONVERTED_CRDS = frozenset(
    f"{plural}.{KUEUE_GROUP}"
    for plural in ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
)


def assets_dir() -> Path:
    """Where scripts/build-k8s put Kueue's CRDs (crd/) and webhook manifests (webhook/)."""
    return bin_dir().parent / "share" / "kueue"


@dataclass
class KueueOptions:
    """What Kueue manages: built-in integrations, and custom kinds it leaves to their own
    controllers (`integrations.externalFrameworks`, e.g. "LargeModelJob.v1alpha1.lmjob.dev")."""

    frameworks: tuple[str, ...] = ("batch/job",)
    external_frameworks: tuple[str, ...] = ()
    feature_gates: dict[str, bool] = field(
        # The on-demand visibility API server would need an APIService and a port of
        # its own; nothing here reads pending workloads through it.
        default_factory=lambda: {"VisibilityOnDemand": False}
    )


def build_configuration(
    *,
    webhook_port: int,
    health_port: int,
    cert_dir: Path,
    options: KueueOptions,
) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a process on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"{LOOPBACK}:{health_port}"},
        # "0" turns controller-runtime's metrics server off: no port to pick or collide on.
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": LOOPBACK, "certDir": str(cert_dir)},
        # One replica per control plane: nothing to elect.
        "leaderElection": {"leaderElect": False},
        # On, but seeded: see the module docstring.
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": WEBHOOK_SERVICE,
            "webhookSecretName": WEBHOOK_SECRET,
        },
        # Only jobs that name a LocalQueue are Kueue's, as in most shared clusters.
        "manageJobsWithoutQueueName": False,
        "integrations": {
            "frameworks": list(options.frameworks),
            **(
                {"externalFrameworks": list(options.external_frameworks)}
                if options.external_frameworks
                else {}
            ),
        },
        "featureGates": dict(options.feature_gates),
    }


def _wanted_webhook(webhook: dict[str, Any], frameworks: tuple[str, ...]) -> bool:
    enabled = {FRAMEWORK_RESOURCES[f] for f in frameworks if f in FRAMEWORK_RESOURCES}
    for rule in webhook.get("rules", []):
        for group in rule.get("apiGroups", []):
            if group == KUEUE_GROUP:
                return True
            if any((group, resource) in enabled for resource in rule.get("resources", [])):
                return True
    return False


def build_webhook_configurations(
    manifests: str, *, base_url: str, ca_pem: bytes, frameworks: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at `base_url` instead of its Service.

    Names get Kueue's release prefix ("kueue-"), as its kustomize build gives them."""
    ca_bundle = base64.b64encode(ca_pem).decode()
    configs = []
    for doc in yaml.safe_load_all(manifests):
        if not doc or not doc.get("kind", "").endswith("WebhookConfiguration"):
            continue
        webhooks = []
        for webhook in doc.get("webhooks", []):
            if not _wanted_webhook(webhook, frameworks):
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook = {**webhook, "clientConfig": {"url": base_url + path, "caBundle": ca_bundle}}
            resources = {r for rule in webhook.get("rules", []) for r in rule.get("resources", [])}
            if resources & SYSTEM_NAMESPACE_EXEMPT:
                webhook["namespaceSelector"] = {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", KUEUE_NAMESPACE],
                        }
                    ]
                }
            webhooks.append(webhook)
        name = "kueue-" + doc["metadata"]["name"]
        configs.append({**doc, "metadata": {"name": name}, "webhooks": webhooks})
    return configs


def with_conversion_webhook(crd: dict[str, Any], *, base_url: str, ca_pem: bytes) -> dict:
    """`crd` converting its versions through Kueue's /convert, as the release installs it."""
    if crd["metadata"]["name"] not in CONVERTED_CRDS:
        return crd
    conversion = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {
                "url": base_url + "/convert",
                "caBundle": base64.b64encode(ca_pem).decode(),
            },
            "conversionReviewVersions": ["v1"],
        },
    }
    return {**crd, "spec": {**crd["spec"], "conversion": conversion}}


class Kueue:
    """Kueue's controller manager for one ControlPlane; `start()` returns once it serves."""

    def __init__(
        self, plane: ControlPlane, state_dir: Path, options: KueueOptions | None = None
    ) -> None:
        self.plane = plane
        self.state_dir = Path(state_dir)
        self.options = options or KueueOptions()
        self.component: Component | None = None
        self.ports: dict[str, int] = {}
        self.startup_s: float | None = None
        # Seconds from start() to each step, for the docs and slow-start triage.
        self.milestones: dict[str, float] = {}
        self._t0 = 0.0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kueue.log"

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['webhook']}"

    def start(
        self, *, timeout: float = 90.0, bind_to_parent: bool = True, record: bool = False
    ) -> None:
        """Install CRDs, cert Secret and webhooks, start the process, wait for /readyz.

        `record` adds the process to the control plane's components (and its state file),
        so `lmjob cluster status|down` see and stop it with the rest."""
        t0 = self._t0 = time.monotonic()
        deadline = t0 + timeout
        binary = find_binaries(["kueue"])["kueue"]
        assets = assets_dir()
        if not (assets / "crd").is_dir():
            raise ControlPlaneError(
                f"Kueue's manifests are missing from {assets}: run `scripts/build-k8s --only kueue`"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        webhook_port, health_port = _free_ports(2)
        self.ports = {"webhook": webhook_port, "health": health_port}
        cert_dir = self.state_dir / "certs"
        ca, serving = build_webhook_serving(
            cert_dir,
            "kueue-webhook",
            ca_name=CA_NAME,
            dns_names=(f"{WEBHOOK_SERVICE}.{KUEUE_NAMESPACE}.svc",),
            validity=CERT_VALIDITY,
            rsa_ca=True,  # cert-controller reads the CA key as PKCS#1 RSA
        )
        ca_pem = ca.cert_pem()

        # Whatever fails from here on, stop() removes the webhooks again: a control plane
        # left with webhooks nobody serves would reject every Job write.
        try:
            # One apply for the CRDs, one for Kueue's namespace, cert Secret and webhooks (as a
            # release applies them); the CRDs establish meanwhile.
            crds = [
                with_conversion_webhook(d, base_url=self.base_url, ca_pem=ca_pem)
                for path in sorted((assets / "crd").glob("*.yaml"))
                for d in yaml.load_all(path.read_text(), Loader=_YAML_LOADER)
                if d
            ]
            self._apply("crds", crds)
            manifests = (assets / "webhook" / "manifests.yaml").read_text()
            webhooks = build_webhook_configurations(
                manifests, base_url=self.base_url, ca_pem=ca_pem, frameworks=self.options.frameworks
            )
            secret = _cert_secret(ca.cert_pem(), ca.key_pem(), serving)
            self._apply("setup", [_namespace(KUEUE_NAMESPACE), secret, *webhooks])
            self._wait_established([c["metadata"]["name"] for c in crds], deadline)
            self._milestone("installed")

            config_path = self.state_dir / "kueue-config.yaml"
            config = build_configuration(
                webhook_port=webhook_port,
                health_port=health_port,
                cert_dir=cert_dir,
                options=self.options,
            )
            config_path.write_text(yaml.safe_dump(config))
            kubeconfig = self._write_kubeconfig()
            self.component = Component(
                "kueue",
                [str(binary), f"--config={config_path}", f"--kubeconfig={kubeconfig}"],
                self.log_path,
            )
            self.component.start(bind_to_parent=bind_to_parent)
            if record:
                self.plane.components.append(self.component)
                self.plane._save_state()
            self._wait_ready(deadline)
            self._milestone("ready")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        log.info("kueue up (webhooks at %s) in %.1fs", self.base_url, self.startup_s)

    @property
    def stopped(self) -> bool:
        """Not running (never started, stopped, or exited)."""
        return self.component is None or not self.component.alive()

    def stop(self) -> None:
        """Stop the process; the webhook configurations are removed first, so a control plane
        that outlives Kueue does not reject Job or Kueue-object writes."""
        if self.ports:
            self.plane.kubectl(
                "delete", "--ignore-not-found", "--wait=false",
                "mutatingwebhookconfiguration/kueue-mutating-webhook-configuration",
                "validatingwebhookconfiguration/kueue-validating-webhook-configuration",
                check=False,
            )  # fmt: skip
        if self.component is not None:
            self.component.stop()

    def check(self) -> None:
        """Raise if the process died (with its log's tail)."""
        if self.component is not None:
            self.component.check()

    def _apply(self, name: str, objects: list[dict[str, Any]]) -> None:
        # JSON, not YAML: the Workload CRD alone is 1.4 MB, which PyYAML writes slowly.
        path = self.state_dir / f"{name}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))

    def _wait_established(self, names: list[str], deadline: float) -> None:
        while True:
            out = self.plane.kubectl("get", "crd", *names, "-o", "json", check=False)
            items = json.loads(out.stdout or "{}").get("items", []) if out.returncode == 0 else []
            established = {
                crd["metadata"]["name"]
                for crd in items
                for c in crd.get("status", {}).get("conditions", [])
                if c["type"] == "Established" and c["status"] == "True"
            }
            pending = sorted(set(names) - established)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"Kueue's CRDs not Established in time: {pending} {out.stderr.strip()}"
                )
            time.sleep(0.2)

    def _milestone(self, name: str) -> None:
        self.milestones[name] = round(time.monotonic() - self._t0, 2)

    def _write_kubeconfig(self) -> Path:
        pair = issue_client_cert(
            self.plane.state_dir / "pki", "kueue", KUEUE_USER, "system:masters"
        )
        config = build_kubeconfig(
            server=self.plane.server,
            ca_pem=self.plane.ca_file.read_bytes(),
            user=KUEUE_USER,
            client_cert_pem=pair.cert_pem(),
            client_key_pem=pair.key_pem(),
        )
        return write_kubeconfig(self.state_dir / "kueue.kubeconfig", config)

    def _wait_ready(self, deadline: float) -> None:
        # /readyz turns 200 once the webhook server listens with its certificate.
        url = f"http://{LOOPBACK}:{self.ports['health']}/readyz"
        last = ""
        assert self.component is not None
        while time.monotonic() < deadline:
            self.component.check()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"kueue not ready at {url} in time ({last}); log {self.log_path}:\n"
            f"{_tail(self.log_path)}"
        )


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _cert_secret(ca_cert: bytes, ca_key: bytes, serving: KeyPair) -> dict[str, Any]:
    """Kueue's cert Secret as its cert manager writes it (ca.crt, ca.key, tls.crt, tls.key)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": WEBHOOK_SECRET, "namespace": KUEUE_NAMESPACE},
        "type": "Opaque",
        "data": {
            "ca.crt": b64(ca_cert),
            "ca.key": b64(ca_key),
            "tls.crt": b64(serving.cert_pem()),
            "tls.key": b64(serving.key_pem()),
        },
    }
