"""A small validator for Kubernetes structural schemas (the subset a CRD uses), for tests.

``jsonschema`` is not a dependency, and it speaks JSON Schema, not the OpenAPI v3.0 dialect
of CRDs (boolean exclusiveMinimum, nullable, x-kubernetes-* extensions). This covers what
the EvaRun CRD uses: type, properties, required, additionalProperties, items, enum,
minimum/maximum with boolean exclusive flags, minLength/maxLength, pattern,
minItems/maxItems, nullable, format date-time, x-kubernetes-preserve-unknown-fields and
x-kubernetes-list-type set/map.

Like ``kubectl apply`` (server-side field validation Strict), unknown fields are errors
where the schema does not preserve them. Like the API server, a null in a field that is not
nullable is dropped before validation. ``apply_defaults`` fills in defaults the way the API
server does when it stores an object.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Any

__all__ = ["apply_defaults", "validate"]


def _type_ok(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise ValueError(f"unknown schema type {t!r}")


def _date_time_ok(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value or "t" in value


def validate(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every problem of ``instance`` against ``schema``, as 'field.path: problem'.

    Validating a whole object (no ``path``), ``metadata`` is left to the API server's own
    ObjectMeta rules, as a CRD's schema may not describe it.
    """
    errors: list[str] = []
    if not path and isinstance(instance, dict) and isinstance(instance.get("metadata"), dict):
        instance = {**instance, "metadata": {}}
    _check(instance, schema, path or "(root)", errors)
    return errors


def _join(path: str, key: str) -> str:
    return key if path == "(root)" else f"{path}.{key}"


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: must not be null")
        return
    t = schema.get("type")
    if t is not None and not _type_ok(value, t):
        errors.append(f"{path}: must be of type {t} (got {type(value).__name__})")
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        errors.append(f"{path}: {value!r} is not one of {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _bounds(value, schema, path, errors)
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not _date_time_ok(value):
            errors.append(f"{path}: {value!r} is not an RFC 3339 date-time")
    if isinstance(value, list):
        _check_list(value, schema, path, errors)
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)


def _bounds(value: float, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if "minimum" in schema:
        lo = schema["minimum"]
        if schema.get("exclusiveMinimum") and not value > lo:
            errors.append(f"{path}: must be greater than {lo}")
        elif not value >= lo:
            errors.append(f"{path}: must be greater than or equal to {lo}")
    if "maximum" in schema:
        hi = schema["maximum"]
        if schema.get("exclusiveMaximum") and not value < hi:
            errors.append(f"{path}: must be less than {hi}")
        elif not value <= hi:
            errors.append(f"{path}: must be less than or equal to {hi}")


def _check_list(value: list[Any], schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if items is not None:
        for i, item in enumerate(value):
            _check(item, items, f"{path}[{i}]", errors)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set" and len({repr(v) for v in value}) != len(value):
        errors.append(f"{path}: duplicate items in a set")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = [tuple(v.get(k) for k in keys) for v in value if isinstance(v, dict)]
        if len(set(seen)) != len(seen):
            errors.append(f"{path}: duplicate items for keys {keys}")


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str]
) -> None:
    props: dict[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    # The API server prunes nulls of fields that are not nullable before validating.
    present = {
        k: v for k, v in value.items() if not (v is None and not props.get(k, {}).get("nullable"))
    }
    for name in schema.get("required", []):
        if name not in present:
            errors.append(f"{_join(path, name)}: required field is missing")
    for key, sub in present.items():
        where = _join(path, key)
        if key in props:
            _check(sub, props[key], where, errors)
        elif isinstance(extra, dict):
            _check(sub, extra, where, errors)
        elif not preserve:
            errors.append(f"{where}: unknown field")


def apply_defaults(instance: Any, schema: dict[str, Any]) -> Any:
    """A copy of ``instance`` with the schema's defaults filled in where fields are absent.

    As on the API server: only inside objects that are present, and a null in a nullable
    field is kept (not defaulted).
    """
    out = copy.deepcopy(instance)
    _default(out, schema)
    return out


def _default(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, sub_value in value.items():
                if key not in props:
                    _default(sub_value, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])
