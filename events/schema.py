"""The JSON Schema of the catalog's events, for the API documents: the body of the ingest route
(OpenAPI, services/api/docs.py) and the payload of ``touchline.in.{ws}`` (AsyncAPI,
services/dispatcher/app.py).

msgspec writes it from events/catalog.py; what the Structs leave to events/validation.py is told
here, so that the documents say what ingest accepts: a contact event's ``subject`` is required and
another type has none, an amount is a JSON number or a numeric string, ``source`` is a
URI-reference. Only the documents use this: events are judged by validation.py alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterable, Union

import msgspec

from events.catalog import ALL_TYPES, Envelope
from events.validation import AMOUNT_DECIMAL_PLACES, AMOUNT_INTEGER_DIGITS

# What a producer may send: the dispatcher's own types are never accepted from outside.
EXTERNAL_TYPES: tuple[type[Envelope], ...] = tuple(cls for cls in ALL_TYPES if not cls.internal)

# A decimal as validation.py takes it: a JSON number, or a string written as one.
DECIMAL = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"},
    ],
    "description": (
        "A non-negative decimal, kept exact: a JSON number, or a string written as one (\"12.50\", \"1e3\");"
        f" at most {AMOUNT_INTEGER_DIGITS} digits before the point and {AMOUNT_DECIMAL_PLACES} after."
    ),
}
# A goal's target is above 0 (catalog.GoalSetData): a number, or a string with a digit other than 0
# before any exponent.
POSITIVE_DECIMAL = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^(?=[0.]*[1-9])" + DECIMAL["anyOf"][1]["pattern"].removeprefix("^")},
    ],
    "description": DECIMAL["description"].replace("A non-negative decimal", "A decimal greater than 0"),
}
POSITIVE_FIELDS = {"GoalSetData": ("target",)}

# Rules of __post_init__ and validation.py about single fields of a data object.
FIELD_NOTES = {
    "GoalSetData": {
        "target": "Greater than 0.",
        "period_start": "UTC date, the first day of the period.",
        "period_end": "UTC date, after period_start; the period ends before it.",
        "currency": "Required when metric is revenue.",
    },
    "OfferMadeData": {"channel": 'Absent or null: "direct".'},
}


def event_schema(
    types: Iterable[type[Envelope]] = EXTERNAL_TYPES, ref_template: str = "#/components/schemas/{name}"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The schema of one structured-mode CloudEvent of ``types`` (a union told apart by ``type``),
    and the named schemas it refers to through ``ref_template``."""
    types = tuple(types)
    (schema,), components = msgspec.json.schema_components([Union[types]], ref_template=ref_template)
    by_name = {cls.__name__: cls for cls in types}
    for name, component in components.items():
        if name in by_name:
            _complete_envelope(component, by_name[name])
        _complete_fields(component, FIELD_NOTES.get(name, {}))
        for field in POSITIVE_FIELDS.get(name, ()):
            component["properties"][field] = POSITIVE_DECIMAL
    return schema, components


_INLINE_PREFIX = "#/$defs/"


def inline_event_schema(types: Iterable[type[Envelope]] = EXTERNAL_TYPES) -> dict[str, Any]:
    """``event_schema`` with every reference replaced by what it names: one self-contained schema,
    for a generator that takes no named schemas from outside (FastStream's, through pydantic)."""
    return _inlined(*event_schema(types, ref_template=_INLINE_PREFIX + "{name}"))


def inline_schema(union: Any) -> dict[str, Any]:
    """The JSON Schema msgspec gives ``union`` (a tagged union of structs, say the work queue's
    commands), self-contained as ``inline_event_schema``'s."""
    (schema,), components = msgspec.json.schema_components([union], ref_template=_INLINE_PREFIX + "{name}")
    return _inlined(schema, components)


def _inlined(schema: dict[str, Any], components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return resolve(copy.deepcopy(components[node["$ref"].removeprefix(_INLINE_PREFIX)]))
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    if "discriminator" in schema:  # its mapping names schemas by reference, and none is left
        schema["discriminator"] = {"propertyName": schema["discriminator"]["propertyName"]}
    return resolve(schema)


def _complete_envelope(schema: dict[str, Any], cls: type[Envelope]) -> None:
    properties = schema["properties"]
    tag = cls.__struct_config__.tag
    # Structured mode's base64 data: the catalog declares it only to refuse it.
    properties.pop("data_base64", None)
    properties["source"]["format"] = "uri-reference"
    properties["time"]["description"] = "RFC 3339 with an offset: when the action happened."
    if cls.contact_event:
        properties["subject"] = {**_not_null(properties["subject"]), "description": "The contact id."}
        schema["required"].append("subject")
        schema["description"] = f"`{tag}`, about the contact named by `subject`."
    else:
        del properties["subject"]
        schema["description"] = f"`{tag}`, about no contact: an event of this type carrying a `subject` is rejected."
    if cls.internal:
        schema["description"] += " Written by Touchline's dispatcher, never accepted from outside."


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of an optional field (``T | None = None``) as that of a required one."""
    (kind,) = [option for option in schema["anyOf"] if option != {"type": "null"}]
    return kind


def _complete_fields(schema: Any, notes: dict[str, str]) -> None:
    """Decimals as validation.py reads them; patterns in the dialect JSON Schema uses; notes."""
    for name, note in notes.items():
        schema["properties"][name]["description"] = note

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("format") == "decimal":
                return {**DECIMAL, "description": " ".join(filter(None, (DECIMAL["description"], node.get("description"))))}
            if "pattern" in node:
                node["pattern"] = _portable_pattern(node["pattern"])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    for name, value in schema.get("properties", {}).items():
        schema["properties"][name] = walk(value)


def _portable_pattern(pattern: str) -> str:
    """Python's case-insensitive group ``(?i:json)`` as ECMA-262 (JSON Schema's dialect) writes
    it: ``[jJ][sS][oO][nN]``."""
    return re.sub(
        r"\(\?i:([^()]*)\)",
        lambda found: "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in found[1]),
        pattern,
    )
