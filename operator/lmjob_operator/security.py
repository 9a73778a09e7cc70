"""The securityContext of every pod lmjob creates: restricted by default, the template's wins.

Defaults that the `restricted` Pod Security Standard admits:
- pod: `runAsNonRoot: true` and `seccompProfile: RuntimeDefault`. No runAsUser: lmjob's
  trainer images run as the numeric non-root USER 1000 (images/trainer), which
  runAsNonRoot verifies; an image of your own that runs as root needs `runAsUser` (or
  `runAsNonRoot: false` outside restricted namespaces) in the template's securityContext.
- every container (the worker, the template's sidecars and initContainers, the rendezvous
  store): `allowPrivilegeEscalation: false` and `capabilities: {drop: [ALL]}`.

What the user's `workers.template` says wins key by key (top-level keys of each
securityContext): the template's pod securityContext over the pod defaults, and each
template container's securityContext over the container defaults. So `privileged: true`
or `capabilities: {add: [SYS_PTRACE]}` in the worker container is honoured, and then the
API server decides (a restricted namespace refuses such a pod, and the job fails at once
with the server's reason: reconcile.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def build_pod_security(template: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pod's securityContext: the defaults, overridden key by key by `template`'s."""
    return copy.deepcopy({**POD_SECURITY, **(template or {})})


def _needs_escalation(security: Mapping[str, Any]) -> bool:
    """The API server refuses `allowPrivilegeEscalation: false` beside these, as invalid."""
    added = (security.get("capabilities") or {}).get("add") or []
    return security.get("privileged") is True or any(
        cap in ("SYS_ADMIN", "CAP_SYS_ADMIN") for cap in added
    )


def build_container_security(template: Mapping[str, Any] | None) -> dict[str, Any]:
    """A container's securityContext: the defaults, overridden key by key by `template`'s.

    A template that asks for `privileged` or CAP_SYS_ADMIN without saying anything about
    allowPrivilegeEscalation does not get our `false`, which the API server would refuse
    as contradictory (in every namespace, restricted or not)."""
    template = template or {}
    defaults = dict(CONTAINER_SECURITY)
    if _needs_escalation(template):
        defaults.pop("allowPrivilegeEscalation")
    return copy.deepcopy({**defaults, **template})


def build_secured_container(container: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `container` with its securityContext merged over the defaults."""
    out = copy.deepcopy(dict(container))
    out["securityContext"] = build_container_security(container.get("securityContext"))
    return out
