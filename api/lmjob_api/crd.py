"""Generates the CRDs (LargeModelJob, LargeModelSweep) from the API models: the one source
of their schemas.

pydantic's JSON Schema is rewritten into a structural OpenAPI v3 schema that the
API server accepts: references inlined, optional fields unwrapped, the stage union
merged into one object (with a CEL rule per type-specific field), JSON-Schema-2020
keywords mapped to their OpenAPI 3.0 forms, and each model's rules added as
`x-kubernetes-validations`. Run `python -m lmjob_api.crd` to regenerate `crds/`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lmjob_api import sweep
from lmjob_api.job import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    LargeModelJob,
)
from lmjob_api.sweep import LargeModelSweep

_DROP = {"title", "discriminator"}
_HEADER = "# Generated from api/lmjob_api by `python -m lmjob_api.crd`. Do not edit.\n"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase."},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers.summary",
        "description": "Active/desired worker pods.",
    },
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.progress.stage",
        "description": "Stage running.",
    },
    {
        "name": "Step",
        "type": "integer",
        "jsonPath": ".status.progress.step",
        "description": "Step of the stage.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "description": "Latest loss.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class _Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            target = self.defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**target, **node}
        if "anyOf" in node:
            return self.convert(self._unwrap_any_of(node))
        if "oneOf" in node:
            return self._merge_union(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "const":
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            elif key == "properties":
                out["properties"] = {
                    name: self._property(prop, name in node.get("required", ()))
                    for name, prop in value.items()
                }
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "additionalProperties":
                if value is True or value == {}:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif value is not False:
                    out["additionalProperties"] = self.convert(value)
            elif key == "default" and value is None:
                continue
            else:
                out[key] = value
        return out

    def _property(self, prop: dict[str, Any], required: bool) -> dict[str, Any]:
        had_default = "default" in prop
        out = self.convert(prop)
        # A nested model with a default_factory: default it to its children's
        # defaults, so CEL rules can rely on them (the server validates a default
        # object as written, without defaulting inside it first).
        if (
            not required
            and not had_default
            and out.get("type") == "object"
            and "properties" in out
            and not out.get("required")
        ):
            out["default"] = {
                name: child["default"]
                for name, child in out["properties"].items()
                if "default" in child
            }
        return out

    def _unwrap_any_of(self, node: dict[str, Any]) -> dict[str, Any]:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            return {**node, "x-kubernetes-int-or-string": True}
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} structurally")
        return {**options[0], **node}

    def _merge_union(self, node: dict[str, Any]) -> dict[str, Any]:
        """One structural object for a `type`-tagged union, with rules standing in for oneOf."""
        variants = [self.convert(v) for v in node["oneOf"]]
        tags = [v["properties"]["type"]["enum"][0] for v in variants]
        common = set.intersection(*(set(v["properties"]) for v in variants))
        props: dict[str, Any] = {}
        owners: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for variant, tag in zip(variants, tags, strict=True):
            for name, schema in variant["properties"].items():
                if name not in common:
                    # A default of one type would be applied to every type's stages.
                    schema = {k: v for k, v in schema.items() if k != "default"}
                owners.setdefault(name, []).append((tag, schema))
        rules: list[dict[str, str]] = []
        for name, owned in owners.items():
            schemas = [s for _, s in owned]
            props[name] = schemas[0]
            if name == "type":
                props[name] = {**schemas[0], "enum": tags}
            elif any(s != schemas[0] for s in schemas):
                # The same field name with different enums in two stage types (e.g. `method`):
                # the schema takes their union and a rule per type keeps each to its own.
                if not all("enum" in s for s in schemas):
                    raise ValueError(f"stage field {name} differs between types and is not an enum")
                union = list(dict.fromkeys(v for s in schemas for v in s["enum"]))
                props[name] = {
                    **schemas[0],
                    "enum": union,
                    "description": "Depends on the stage type.",
                }
                for tag, schema in owned:
                    allowed = ", ".join(f"'{v}'" for v in schema["enum"])
                    rules.append(
                        {
                            "rule": f"self.type != '{tag}' || !has(self.{name}) || self.{name} in [{allowed}]",
                            "message": f"{name} of a {tag} stage must be one of {', '.join(schema['enum'])}",
                            "fieldPath": f".{name}",
                        }
                    )
            if name not in common:
                allowed_tags = [t for t, _ in owned]
                rules.append(
                    {
                        "rule": f"!has(self.{name}) || self.type in [{', '.join(repr(t) for t in allowed_tags)}]",
                        "message": f"{name} applies only to stages of type {' or '.join(allowed_tags)}",
                        "fieldPath": f".{name}",
                    }
                )
        for variant, tag in zip(variants, tags, strict=True):
            for name in variant.get("required", ()):
                if name not in common:
                    rules.append(
                        {
                            "rule": f"self.type != '{tag}' || has(self.{name})",
                            "message": f"a {tag} stage needs {name}",
                            "fieldPath": f".{name}",
                        }
                    )
            for rule in variant.get("x-kubernetes-validations", ()):
                rules.append({**rule, "rule": f"self.type != '{tag}' || ({rule['rule']})"})
        required = sorted(set.intersection(*(set(v.get("required", ())) for v in variants)))
        return {
            "type": "object",
            "description": "A compression stage; `type` selects which fields apply.",
            "properties": props,
            "required": required,
            "x-kubernetes-validations": rules,
        }


@dataclass(frozen=True)
class Kind:
    """One custom resource lmjob defines: its model, names and columns."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    columns: tuple[dict[str, str], ...]
    subresources: dict[str, Any]

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


SWEEP_PRINTER_COLUMNS = (
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Sweep phase."},
    {
        "name": "Trials",
        "type": "string",
        "jsonPath": ".status.summary",
        "description": "Finished trials / maxTrials.",
    },
    {
        "name": "Pruned",
        "type": "integer",
        "jsonPath": ".status.pruned",
        "description": "Trials stopped early.",
    },
    {
        "name": "Best",
        "type": "number",
        "jsonPath": ".status.best.value",
        "description": "Best objective so far.",
    },
    {
        "name": "Best-Trial",
        "type": "string",
        "jsonPath": ".status.best.name",
        "description": "The best trial's job.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)

JOB_KIND = Kind(
    model=LargeModelJob,
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=SHORT_NAMES,
    description="LargeModelJob trains a model on elastic torchrun workers, then runs its "
    "compression stages.",
    columns=tuple(PRINTER_COLUMNS),
    subresources={
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.workers.replicas",
            "statusReplicasPath": ".status.workers.active",
            "labelSelectorPath": ".status.workers.selector",
        },
    },
)
SWEEP_KIND = Kind(
    model=LargeModelSweep,
    kind=sweep.KIND,
    plural=sweep.PLURAL,
    singular=sweep.SINGULAR,
    short_names=sweep.SHORT_NAMES,
    description="LargeModelSweep searches hyperparameters of a LargeModelJob template with "
    "Optuna, running each trial as a LargeModelJob and stopping bad ones early.",
    columns=SWEEP_PRINTER_COLUMNS,
    subresources={"status": {}},
)
KINDS = (JOB_KIND, SWEEP_KIND)
CRD_FILE_NAME = JOB_KIND.file_name


def build_schema(kind: Kind = JOB_KIND) -> dict[str, Any]:
    """The structural openAPIV3Schema of one kind."""
    raw = kind.model.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.pop("$defs", {}))
    schema = converter.convert(raw)
    schema["description"] = kind.description
    props = schema["properties"]
    props["apiVersion"] = {"type": "string", "description": API_VERSION}
    props["kind"] = {"type": "string", "description": kind.kind}
    props["metadata"] = {"type": "object"}
    # kopf may touch `status.kopf` (e.g. for dummy patches); leave it room so it isn't pruned.
    props["status"]["properties"]["kopf"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    schema["required"] = ["spec"]
    return schema


def build_crd(kind: Kind = JOB_KIND) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["all", "lmjob"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": build_schema(kind)},
                    "subresources": copy.deepcopy(kind.subresources),
                    "additionalPrinterColumns": copy.deepcopy(list(kind.columns)),
                }
            ],
        },
    }


def render_crd(kind: Kind = JOB_KIND) -> str:
    """The CRD as the YAML text committed under crds/."""
    return _HEADER + yaml.safe_dump(build_crd(kind), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Generate the {API_VERSION} CRDs.")
    parser.add_argument("--out", default="crds", help="directory to write into (default: crds)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = 0
    for kind in KINDS:
        path = Path(args.out) / kind.file_name
        text = render_crd(kind)
        if args.check:
            if not path.exists() or path.read_text() != text:
                sys.stderr.write(f"{path} is out of date: run `python -m lmjob_api.crd`\n")
                stale = 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sys.stdout.write(f"wrote {path} ({len(text.encode())} bytes)\n")
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
