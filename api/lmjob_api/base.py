"""The base class of every API model, and cross-field rules written once for both validators.

A `Rule` carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`,
so the API server enforces it) and the same check in Python (run by `lmjob validate`,
the operator and the trainer). Both report the same message, so users see one wording
whichever side rejects them; the shared invalid-manifest table keeps the two in step.
A transition rule compares an object with its stored version (CEL's `oldSelf`): only the
API server can check it, on update; offline validation has no old object and skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """One cross-field rule of a model, checked by the API server and by Python alike."""

    cel: str
    """CEL over `self` (the object the rule is attached to), true when valid."""
    message: str
    """What is wrong and what to do; names the field."""
    check: Callable[..., bool]
    """The Python twin of `cel`, given the validated model (a transition rule: the new and
    the old model); true when valid."""
    field: str | None = None
    """Dotted path (camelCase) below the object that the error points at, when one field is at fault."""
    transition: bool = False
    """The rule reads `oldSelf`: the API server evaluates it on updates only, and offline
    validation (`lmjob validate`, the operator, the trainer: one manifest, no stored
    version) skips it. Kubernetes allows one on a required object (e.g. the spec)."""

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


def _add_rules_to_schema(schema: dict[str, Any], cls: type[ApiModel]) -> None:
    rules = cls.__dict__.get("rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_crd() for r in rules]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_rules_to_schema,
        validate_default=False,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    def rule_children(self) -> list[tuple[ApiModel, str]]:
        """Models whose rules apply below this one besides its fields (e.g. a free-form
        field checked through a typed view), with the field name they sit under."""
        return []

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, nothing unset)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
