"""What a local node translates instead of running containers, as pure functions: the image
table that gives a command-less container its entrypoint, and mount paths inside files. (The
cluster tests run them for real; these pin the edge cases.)"""

from __future__ import annotations

import pytest

from lmjob_cli.localcluster.process_kubelet import image_command, rewrite_mount_paths
from lmjob_operator.credentials import DEFAULT_SERVICE_ACCOUNT_DIR, named_in_cluster

OPERATOR = ["python", "-m", "lmjob_operator"]
TRAINER = ["python", "-m", "lmjob_trainer.launch", "--", "-m", "lmjob_trainer"]


@pytest.mark.parametrize(
    ("image", "command", "args", "expected"),
    [
        ("ghcr.io/lmjob/operator:0.1.0", [], ["--standalone"], [*OPERATOR, "--standalone"]),
        ("registry:5000/team/lmjob/operator@sha256:ab", [], [], OPERATOR),
        ("lmjob/operator", [], [], OPERATOR),
        # CMD, replaced by args as a runtime does; the ENTRYPOINT (none) stays.
        ("ghcr.io/lmjob/trainer:0.1.0-cpu", [], [], TRAINER),
        ("ghcr.io/lmjob/trainer:0.1.0-cpu", [], ["python", "x.py"], ["python", "x.py"]),
        # A command wins over any image, known or not.
        ("python:3.12", ["python", "-c"], ["pass"], ["python", "-c", "pass"]),
        ("python:3.12", [], ["x"], None),
        ("ghcr.io/other/lmjob-operator:1", [], [], None),
    ],
)
def test_image_command(image: str, command: list[str], args: list[str], expected: object) -> None:
    assert image_command(image, command, args) == expected


MOUNTS = {"/data": "/h/text", "/data/cache": "/h/cache", "/checkpoints/": "/h/ckpt"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source: /data/tinyshakespeare.txt\n", "source: /h/text/tinyshakespeare.txt\n"),
        ("{dir: /data/cache/x, out: /checkpoints}", "{dir: /h/cache/x, out: /h/ckpt}"),
        ("'/data'", "'/h/text'"),
        # Only whole path components at a path's start.
        ("/database /srv/data /data.txt ./data", "/database /srv/data /data.txt ./data"),
    ],
)
def test_rewrite_mount_paths(text: str, expected: str) -> None:
    assert rewrite_mount_paths(text, MOUNTS) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),  # a real node: the clients' fixed path
        (
            {
                "LMJOB_SERVICE_ACCOUNT_DIR": "/pods/p/sa",
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": "6443",
            },
            ("/pods/p/sa/token", "https://127.0.0.1:6443"),
        ),
        (
            {
                "LMJOB_SERVICE_ACCOUNT_DIR": "/sa",
                "KUBERNETES_SERVICE_HOST": "::1",
                "KUBERNETES_SERVICE_PORT": "443",
            },
            ("/sa/token", "https://[::1]:443"),
        ),
    ],
)
def test_named_in_cluster(env: dict[str, str], expected: object) -> None:
    found = named_in_cluster(env)
    assert (found and (str(found.token_file), found.server)) == expected


def test_named_folder_without_a_server_is_an_error() -> None:
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST"):
        named_in_cluster({"LMJOB_SERVICE_ACCOUNT_DIR": DEFAULT_SERVICE_ACCOUNT_DIR})


def test_downward_api_variables_are_filled_as_a_kubelet_fills_them() -> None:
    """The worker pods' LMJOB_POD_NAME / LMJOB_NODE_NAME come from fieldRefs (how a
    straggler's pod and node are named); sources a process cannot have read empty."""
    from kubernetes.client import (
        V1EnvVar,
        V1EnvVarSource,
        V1ObjectFieldSelector,
        V1ObjectMeta,
        V1Pod,
        V1PodSpec,
        V1SecretKeySelector,
    )

    from lmjob_cli.localcluster.process_kubelet import _field, pod_ip

    pod = V1Pod(
        metadata=V1ObjectMeta(name="gpt-worker-1", namespace="ml", uid="u-1"),
        spec=V1PodSpec(containers=[], node_name="local-0"),
    )

    def ref(path: str) -> V1EnvVar:
        selector = V1ObjectFieldSelector(field_path=path)
        return V1EnvVar(name="X", value_from=V1EnvVarSource(field_ref=selector))

    assert _field(pod, ref("metadata.name")) == "gpt-worker-1"
    assert _field(pod, ref("spec.nodeName")) == "local-0"
    assert _field(pod, ref("metadata.namespace")) == "ml"
    # Each pod its own loopback address (its trainer binds its metrics port there), fixed
    # by its uid; the node's is 127.0.0.1, where Services' listeners are.
    ip = _field(pod, ref("status.podIP"))
    assert ip == pod_ip(pod) and ip.startswith("127.") and ip != "127.0.0.1", ip
    other = V1Pod(metadata=V1ObjectMeta(name="gpt-worker-2", namespace="ml", uid="u-2"))
    assert pod_ip(other) != ip
    assert _field(pod, ref("status.hostIP")) == "127.0.0.1"
    secret = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name="s", key="k"))
    assert _field(pod, V1EnvVar(name="Y", value_from=secret)) == ""
