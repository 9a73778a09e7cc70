"""Hypothesis strategies for LargeModelJob manifests: plausible ones built field by field
around the boundaries of every rule, and mutations of them (a field set to a value of the
wrong type or range, a field removed, an unknown field added).

Used by the agreement fuzz test, which sends each manifest to `lmjob validate`'s function
and to the real API server and requires the same verdict.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=70000),
    st.sampled_from([0.5, 1.5, -1.0, 1e9]),
    st.sampled_from(["", "x", "8", "2Gi", "PET_X", "worker", "/checkpoints", "head"]),
    st.just([]),
    st.just({}),
    st.just([{"name": "x"}]),
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value, or the marker that leaves the field out."""
    return st.one_of(st.just(_ABSENT), strategy)


_ABSENT = object()


def _drop_absent(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_absent(v) for k, v in value.items() if v is not _ABSENT}
    if isinstance(value, list):
        return [_drop_absent(v) for v in value if v is not _ABSENT]
    return value


def _rarely(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` most of the time, `bad` one draw in twelve: a manifest makes some twenty such
    choices, so about a third of them come out valid and the rest break one or two rules."""
    # A middle value picks `bad`: hypothesis draws the ends of a range more often, and
    # shrinks towards 0, so a minimal failing example keeps only the bad choices it needs.
    return st.integers(0, 11).flatmap(lambda i: bad if i == 7 else good)


_SMALL = st.sampled_from([1, 2, 3, 4, 6, 8])
_HEADS = _rarely(st.sampled_from([1, 2, 4, 6, 8, 12, 16]), st.sampled_from([3, 5, 256, 257]))
_HIDDEN = _rarely(
    st.sampled_from([32, 48, 64, 96, 128, 256, 384, 768]),
    st.sampled_from([8, 66, 100, 257, 65536]),
)
_TP = _rarely(st.sampled_from([1, 2, 4]), st.sampled_from([3, 8]))
_ENV_NAMES = _rarely(
    st.sampled_from(["OK", "NCCL_DEBUG"]),
    st.sampled_from(["PET_NNODES", "RANK", "LMJOB_X", "TORCHELASTIC_Y"]),
)


@st.composite
def _stage(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["prune", "lowrank", "quantize", "distill"]))
    stage: dict[str, Any] = {
        "name": draw(_rarely(st.just(f"s{index}"), st.sampled_from(["s0", "train"]))),
        "type": kind,
    }
    stage["finetuneSteps"] = draw(_maybe(st.sampled_from([0, 0, 5])))
    if kind == "prune":
        stage["sparsity"] = draw(_maybe(st.sampled_from([0.3, 0.5])))
        stage["structure"] = draw(_maybe(st.sampled_from(["unstructured", "channel", "head"])))
        stage["scope"] = draw(_maybe(st.sampled_from(["global", "layer"])))
    elif kind == "lowrank":
        choice = draw(
            _rarely(st.sampled_from(["rank", "energy"]), st.sampled_from(["both", "none"]))
        )
        if choice in ("rank", "both"):
            stage["rankRatio"] = 0.5
        if choice in ("energy", "both"):
            stage["energy"] = 0.9
        stage["method"] = draw(_maybe(st.sampled_from(["svd", "activation-aware"])))
    elif kind == "quantize":
        stage["method"] = draw(_maybe(st.sampled_from(["int8-weight-only", "int8-dynamic"])))
    else:
        stage["student"] = {
            "layers": draw(_maybe(st.sampled_from([1, 2, 4, 6, 8]))),
            "heads": draw(_maybe(_HEADS)),
            "hidden": draw(_maybe(_HIDDEN)),
        }
        stage["steps"] = draw(_maybe(st.sampled_from([1, 50])))
    return stage


@st.composite
def _template(draw: st.DrawFn) -> dict[str, Any]:
    containers = []
    for i in range(draw(_rarely(st.integers(0, 1), st.integers(2, 3)))):
        container: dict[str, Any] = {
            "name": draw(st.sampled_from(["worker", "pytorch", f"side{i}"]))
        }
        if draw(_rarely(st.just(container["name"].startswith("side")), st.booleans())):
            container["image"] = "busybox:1"
        if draw(st.integers(0, 11)) == 0:
            container["command"] = ["sleep", "1"]
        if draw(st.booleans()):
            container["env"] = [{"name": draw(_ENV_NAMES), "value": "1"}]
        if draw(st.integers(0, 3)) == 0:
            container["volumeMounts"] = [
                {
                    "name": "d",
                    "mountPath": draw(st.sampled_from(["/data", "/checkpoints", "/dev/shm"])),
                }
            ]
        containers.append(container)
    spec: dict[str, Any] = {}
    if containers or draw(st.booleans()):
        spec["containers"] = containers
    if draw(st.integers(0, 3)) == 0:
        spec["volumes"] = [
            {"name": draw(_rarely(st.just("d"), st.just("lmjob-dshm"))), "emptyDir": {}}
        ]
    if draw(st.integers(0, 5)) == 0:
        spec["restartPolicy"] = draw(_rarely(st.just("Never"), st.just("Always")))
    if draw(st.integers(0, 3)) == 0:
        spec["nodeSelector"] = {"pool": "gpu"}
    return {"spec": spec}


@st.composite
def _workers(draw: st.DrawFn) -> dict[str, Any]:
    replicas = draw(st.sampled_from([1, 2, 3, 4]))
    workers: dict[str, Any] = {
        "replicas": replicas,
        "minReplicas": draw(
            _maybe(_rarely(st.integers(1, replicas), st.integers(replicas + 1, 5)))
        ),
        "maxReplicas": draw(
            _maybe(_rarely(st.integers(replicas, 8), st.integers(1, max(1, replicas - 1))))
        ),
        "procsPerWorker": draw(_maybe(_SMALL)),
    }
    gpus = draw(
        _maybe(_rarely(st.sampled_from([0, 1, 2, 4, 8, "2", "8"]), st.sampled_from(["x", "2Gi"])))
    )
    if gpus is not _ABSENT:
        workers["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    if draw(st.integers(0, 3)) == 0:
        workers["env"] = [{"name": draw(_ENV_NAMES), "value": "1"}]
    if draw(st.booleans()):
        workers["template"] = draw(_template())
    return workers


@st.composite
def _training(draw: st.DrawFn) -> dict[str, Any]:
    architecture = draw(st.sampled_from(["gpt", "gpt", "gpt", "hf"]))
    model: dict[str, Any] = {
        "architecture": draw(_maybe(st.just(architecture))),
        "layers": draw(_maybe(st.sampled_from([1, 2, 4, 6]))),
        "heads": draw(_maybe(_HEADS)),
        "hidden": draw(_maybe(_HIDDEN)),
        "seqLen": draw(_maybe(st.sampled_from([8, 64]))),
    }
    if architecture == "hf" and draw(st.integers(0, 4)):
        model["path"] = "/models/tiny"
    strategy = draw(st.sampled_from(["ddp", "fsdp", "fsdp+tp", "fsdp+tp"]))
    global_batch = draw(_maybe(st.sampled_from([1, 8, 16, 17, 24, 40, 512])))
    return {
        "model": model,
        "data": {
            "source": "/data/text.txt",
            "tokenizer": draw(_maybe(st.sampled_from(["bytes", "/tok"]))),
        },
        "parallelism": {
            "strategy": strategy,
            "tensorParallel": draw(_maybe(_TP)),
        },
        "precision": draw(_maybe(st.sampled_from(["fp32", "bf16", "fp16"]))),
        "steps": draw(_maybe(st.sampled_from([1, 10, 50, 99, 100, 1000]))),
        "schedule": draw(
            _maybe(
                st.fixed_dictionaries(
                    {"warmupSteps": _rarely(st.sampled_from([0, 5]), st.sampled_from([100, 500]))}
                )
            )
        ),
        "batch": {
            "microBatchSize": draw(_maybe(st.sampled_from([1, 4, 8, 16, 32]))),
            "globalBatchSize": global_batch,
        },
    }


@st.composite
def _export(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    """spec.export naming the job's own stages, sometimes a stage it lacks or a format twice."""
    names = ["train", *(s.get("name") for s in spec.get("compression", {}).get("stages", []))]
    formats = draw(
        _rarely(
            st.lists(st.sampled_from(["hf", "onnx", "gguf"]), min_size=1, max_size=3, unique=True),
            st.sampled_from([[], ["hf", "hf"], ["safetensors"]]),
        )
    )
    stages = draw(
        _maybe(
            _rarely(
                st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True),
                st.sampled_from([["nope"], ["train", "train"]]),
            )
        )
    )
    gguf_type = draw(_maybe(st.sampled_from(["auto", "f32", "f16", "q8_0"])))
    return {"formats": formats, "stages": stages, "ggufType": gguf_type}


@st.composite
def plausible_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A manifest built field by field near every rule's boundary (many valid, many not)."""
    spec: dict[str, Any] = {"workers": draw(_workers())}
    mode = draw(_rarely(st.sampled_from(["training", "training", "command"]), st.just("both")))
    if mode in ("training", "both"):
        spec["training"] = draw(_training())
    if mode in ("command", "both"):
        spec["command"] = ["python", "train.py"]
    if mode != "command" or draw(st.integers(0, 4)) == 0:
        stages = [draw(_stage(i)) for i in range(draw(st.integers(0, 4)))]
        if stages or draw(st.booleans()):
            spec["compression"] = {"stages": stages}
    if draw(st.integers(0, 2)) == 0:
        spec["export"] = draw(_export(spec))
    if draw(st.integers(0, 4)) == 0:
        spec["storage"] = {
            "path": draw(_rarely(st.just("/checkpoints"), st.sampled_from(["/data", "relative"])))
        }
    name = draw(_rarely(st.just("fz-job"), st.sampled_from(["Fz", "a" * 51, "x-"])))
    return _drop_absent(
        {
            "apiVersion": "lmjob.dev/v1alpha1",
            "kind": "LargeModelJob",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


@st.composite
def mutated_jobs(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A seed manifest with one to three mutations anywhere in its spec."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p[0] == "spec" and len(p) > 1]
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["set", "set", "delete", "unknown"]))
        if action == "set":
            # A copy: st.just() hands out one shared object, which a later mutation of
            # this manifest (an unknown key added to it) would otherwise change for good.
            parent[last] = copy.deepcopy(draw(_JUNK))
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last]["notAField"] = 1
        if not isinstance(doc.get("spec"), dict):
            doc["spec"] = {}
    return doc
