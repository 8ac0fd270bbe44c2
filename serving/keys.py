"""Entity keys as lookups give them: one id, or one value per key field of a composite view.

A view keyed by several fields (DESIGN "Entities") stores each entity under the encoding of
its key values (:func:`freshet.sinks.layout.encode_entity`: ``c1|m2``). Lookups name such an
entity by its values — path segments in key order, or a JSON object of key fields — or by
the encoded string itself; :func:`composite_key` turns any of these into the stored id and
the ``{field: value}`` object the endpoint echoes as ``key``::

    composite_key(layout, ["c1", "m2"])                        # -> ("c1|m2", {...})
    composite_key(layout, {"card_id": "c1", "merchant": "m2"})
    composite_key(layout, "c1|m2")

Each value follows the rule of one-field ids (:func:`entity_problem`). A long key field takes
an integer or a string of decimal digits and is stored as its decimal digits (``"007"`` and
``7`` name the same entity, ``7``), as the decoder stores it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from freshet.sinks.layout import (
    ENTITY_FORBIDDEN_CHARS,
    MAX_ENTITY_LENGTH,
    ViewLayout,
    decode_entity,
    encode_entity,
)

__all__ = ["EntityKeyError", "KeyValue", "composite_key", "entity_problem", "key_shape"]

KeyValue = str | int

_forbidden_char = ENTITY_FORBIDDEN_CHARS.search
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_INT64 = range(-(2**63), 2**63)


class EntityKeyError(ValueError):
    """An entity key a view cannot have; the message names the key field and the view's key."""


def entity_problem(entity: str) -> str | None:
    """Why ``entity`` is not an id freshet can store or serve, or None if it is one.

    The lookup endpoint answers such ids with a 422 carrying this message, and ``freshet get``
    refuses them with it: one rule, in one place (``freshet.sinks.layout`` holds its limits).
    """
    if not entity:
        return "entity ids are non-empty strings"
    if len(entity) > MAX_ENTITY_LENGTH:
        return f"entity of {len(entity)} characters; the maximum is {MAX_ENTITY_LENGTH}"
    if _forbidden_char(entity):
        # Control characters and bytes that are not UTF-8 (lone surrogates here) can never be
        # stored: the decoders dead-letter such ids.
        return (
            "entity ids are UTF-8 text without control characters; "
            f"got {entity.encode('utf-8', 'surrogateescape')!r}"[:200]
        )
    return None


def key_shape(layout: ViewLayout) -> str:
    """The view's key for messages: ``view 'card_merchant' is keyed by card_id, merchant``."""
    return f"view {layout.name!r} is keyed by {', '.join(layout.keys)}"


def composite_key(
    layout: ViewLayout, key: Sequence[object] | Mapping[str, object] | str
) -> tuple[str, dict[str, KeyValue]]:
    """The stored entity id of ``key`` and its ``{field: value}`` object (long fields as int).

    ``key`` is the values in key order, an object of key fields, or an encoded id; raises
    :class:`EntityKeyError` for a missing, extra or ill-typed field or a bad value.
    """
    fields = layout.keys
    if isinstance(key, str):
        try:
            values: Sequence[object] = decode_entity(key, len(fields))
        except ValueError:
            raise EntityKeyError(
                f"entity {key[:100]!r} is not a key of {len(fields)} fields; {key_shape(layout)}: "
                f"give an object of them or their values joined by '|' "
                "(with '%' as '%25' and '|' as '%7C' in each)"
            ) from None
    elif isinstance(key, Mapping):
        missing = [f for f in fields if f not in key]
        extra = [str(f) for f in key if f not in fields]
        if missing or extra:
            problems = [f"no {', '.join(map(repr, missing))}"] if missing else []
            problems += [f"unknown {', '.join(map(repr, extra))}"] if extra else []
            raise EntityKeyError(f"{' and '.join(problems)} in the key; {key_shape(layout)}")
        values = [key[f] for f in fields]
    else:
        values = key
        if len(values) != len(fields):
            raise EntityKeyError(
                f"{len(values)} key value(s) given; {key_shape(layout)} (one value each, "
                "in this order)"
            )
    types = layout.key_types
    parts: list[str] = []
    out: dict[str, KeyValue] = {}
    for i, (field, value) in enumerate(zip(fields, values, strict=True)):
        if i < len(types) and types[i] == "int64":
            number = _integer(layout, field, value)
            parts.append(str(number))
            out[field] = number
            continue
        if not isinstance(value, str):
            raise EntityKeyError(
                f"key field {field!r} is {value!r}; it is a string ({key_shape(layout)})"
            )
        problem = entity_problem(value)
        if problem is not None:
            raise EntityKeyError(f"key field {field!r}: {problem} ({key_shape(layout)})")
        parts.append(value)
        out[field] = value
    return encode_entity(parts), out


def _integer(layout: ViewLayout, field: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in _INT64:
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value) and int(value) in _INT64:
        return int(value)
    shown = repr(value) if not isinstance(value, str) else repr(value[:100])
    raise EntityKeyError(
        f"key field {field!r} is {shown}; it is a long: an integer or a string of decimal "
        f"digits within 64 bits ({key_shape(layout)})"
    )
