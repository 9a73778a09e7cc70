"""Generates the LargeModelJob CRD from the API models: the one source of its schema.

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
from pathlib import Path
from typing import Any

import yaml

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

CRD_FILE_NAME = f"{GROUP}_{PLURAL}.yaml"
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


def build_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of LargeModelJob."""
    raw = LargeModelJob.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.pop("$defs", {}))
    schema = converter.convert(raw)
    schema["description"] = (
        "LargeModelJob trains a model on elastic torchrun workers, then runs its compression stages."
    )
    props = schema["properties"]
    props["apiVersion"] = {"type": "string", "description": "lmjob.dev/v1alpha1"}
    props["kind"] = {"type": "string", "description": "LargeModelJob"}
    props["metadata"] = {"type": "object"}
    # kopf may touch `status.kopf` (e.g. for dummy patches); leave it room so it isn't pruned.
    props["status"]["properties"]["kopf"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    schema["required"] = ["spec"]
    return schema


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "lmjob"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": build_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers.replicas",
                            "statusReplicasPath": ".status.workers.active",
                            "labelSelectorPath": ".status.workers.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as the YAML text committed under crds/."""
    return _HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Generate the {API_VERSION} {KIND} CRD.")
    parser.add_argument("--out", default="crds", help="directory to write into (default: crds)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    path = Path(args.out) / CRD_FILE_NAME
    text = render_crd()
    if args.check:
        if not path.exists() or path.read_text() != text:
            sys.stderr.write(f"{path} is out of date: run `python -m lmjob_api.crd`\n")
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    sys.stdout.write(f"wrote {path} ({len(text.encode())} bytes)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
