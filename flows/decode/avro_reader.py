"""A generated reader for flat Avro records: straight-line Python for one schema.

``compile_reader(schema, wanted)`` returns ``read(value, start) -> (values, end)`` for a record
schema whose fields are all ``int``, ``long``, ``float``, ``double`` or ``string``, or a union of
one of those with ``null`` (time logical types read as their plain ints), or ``None`` for any
other schema (callers then use fastavro's ``schemaless_reader``). ``values`` are the ``wanted``
fields in that order; ``end`` is the offset after the record, so callers can refuse trailing
bytes.

Why: fastavro's ``schemaless_reader`` pays a per-call set-up (a stream object, schema
dispatch, a dict) larger than reading a small record; the generated reader skips it and returns
only the fields the view needs. Decoding is the largest part of the flow's per-event cost
outside the engine (figures: ``tests/bench/README.md``).

It reads what fastavro reads: zigzag varints (up to 7 bytes here, longer ones by fastavro's
own varint reader, which wraps at 64 bits), little-endian IEEE floats,
length-prefixed strings decoded as strict UTF-8, union branch indexes as Python list indexes
(fastavro indexes the branch list with the decoded long, so ``-1`` names the last branch).
Anything else raises (``IndexError``, ``EOFError``, ``struct.error``, ``UnicodeDecodeError``,
``ValueError``): the caller dead-letters the record. ``tests/unit/test_decode_fuzz.py``
checks it against fastavro on random and mutated records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from typing import Any, cast

import fastavro._read

__all__ = ["Reader", "compile_reader", "fast_plan"]

Reader = Callable[[bytes, int], tuple[tuple[Any, ...], int]]

# fastavro's varint reader (in its compiled module, missing from its stubs). Without it, every
# schema is read by fastavro itself.
_FASTAVRO_READ_LONG: Callable[[BytesIO], int] | None = getattr(fastavro._read, "read_long", None)

_PRIMITIVES = frozenset({"int", "long", "float", "double", "string"})


def _read_long(v: bytes, p: int) -> tuple[int, int]:
    """A zigzag varint at ``p``: ``(value, offset after it)``; unrolled for up to 7 bytes
    (epoch milliseconds take 6; no 64-bit overflow possible), fastavro's reader beyond."""
    b = v[p]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), p + 1
    n = b & 0x7F
    b = v[p + 1]
    n |= (b & 0x7F) << 7
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 2
    b = v[p + 2]
    n |= (b & 0x7F) << 14
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 3
    b = v[p + 3]
    n |= (b & 0x7F) << 21
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 4
    b = v[p + 4]
    n |= (b & 0x7F) << 28
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 5
    b = v[p + 5]
    n |= (b & 0x7F) << 35
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 6
    b = v[p + 6]
    n |= (b & 0x7F) << 42
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), p + 7
    # 8 bytes or more: fastavro's own reader, for its 64-bit overflow behaviour.
    buf = BytesIO(v)
    buf.seek(p)
    return cast(Callable[[BytesIO], int], _FASTAVRO_READ_LONG)(buf), buf.tell()


def _short(n: int, p: int, size: int) -> EOFError:
    return EOFError(f"string of {n} bytes at offset {p} of a {size}-byte record")


_DOUBLE = struct.Struct("<d").unpack_from
_FLOAT = struct.Struct("<f").unpack_from


def _branch(avro_type: Any) -> tuple[str, int | None] | None:
    """``(primitive, index of null in the union or None)``, or None if not supported."""
    if isinstance(avro_type, str):
        return (avro_type, None) if avro_type in _PRIMITIVES else None
    if isinstance(avro_type, dict) and not avro_type.get("logicalType"):
        return _branch(avro_type.get("type"))
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        null = avro_type.index("null")
        other = _branch(avro_type[1 - null])
        if other is None or other[1] is not None:
            return None
        return other[0], null
    return None


def _read_code(name: str, primitive: str, indent: str) -> list[str]:
    if primitive in ("int", "long"):
        return [f"{indent}{name}, p = read_long(v, p)"]
    if primitive == "string":
        # Inlined, with the one-byte length (< 64 bytes) read in place.
        return [
            f"{indent}b = v[p]",
            f"{indent}if b < 0x80:",
            f"{indent}    n = (b >> 1) ^ -(b & 1)",
            f"{indent}    p += 1",
            f"{indent}else:",
            f"{indent}    n, p = read_long(v, p)",
            f"{indent}e = p + n",
            f"{indent}if n < 0 or e > len(v):",
            f"{indent}    raise short(n, p, len(v))",
            f"{indent}{name} = v[p:e].decode()",
            f"{indent}p = e",
        ]
    size = 8 if primitive == "double" else 4
    unpack = "DOUBLE" if primitive == "double" else "FLOAT"
    return [f"{indent}{name} = {unpack}(v, p)[0]", f"{indent}p += {size}"]


def compile_reader(schema: Mapping[str, Any], wanted: Sequence[str]) -> Reader | None:
    """A reader of ``schema``'s records returning the ``wanted`` fields, or None when the
    schema holds a type this reader does not handle (see the module docstring).

    ``schema`` is a record schema with time logical types already stripped
    (``freshet.decode.decoder.strip_time_logical_types``).
    """
    if schema.get("type") != "record" or _FASTAVRO_READ_LONG is None:
        return None
    fields = schema.get("fields", [])
    names = [f["name"] for f in fields]
    if not set(wanted) <= set(names):
        return None
    lines = ["def read(v, p):"]
    for i, field in enumerate(fields):
        kind = _branch(field["type"])
        if kind is None:
            return None
        primitive, null = kind
        local = f"f{i}"
        if null is None:
            lines += _read_code(local, primitive, "    ")
            continue
        lines += [
            "    i, p = read_long(v, p)",
            "    if i < 0:",
            "        i += 2  # fastavro indexes the branch list with it",
            f"    if i == {null}:",
            f"        {local} = None",
            f"    elif i == {1 - null}:",
            *_read_code(local, primitive, "        "),
            "    else:",
            "        raise IndexError(f'union branch {i} of 2')",
        ]
    out = ", ".join(f"f{names.index(w)}" for w in wanted)
    lines.append(f"    return ({out}{',' if len(wanted) == 1 else ''}), p")
    namespace: dict[str, Any] = {
        "read_long": _read_long,
        "short": _short,
        "DOUBLE": _DOUBLE,
        "FLOAT": _FLOAT,
    }
    exec(compile("\n".join(lines), f"<avro reader {schema.get('name', '')}>", "exec"), namespace)
    reader: Reader = namespace["read"]
    return reader


_PLAN_TYPES = {"int": b"l", "long": b"l", "double": b"d", "float": b"f", "string": b"s"}
_SKIPPED = 255


def fast_plan(schema: Mapping[str, Any], wanted: Sequence[str]) -> tuple[bytes, bytes] | None:
    """``(plan, slots)`` describing ``schema`` to the C decoder (``flows/decode/_fastdecode.c``):
    per field in schema order, its type and null branch, and its position among ``wanted``
    (255: skipped). None where ``compile_reader`` would return None, or for a schema the C
    decoder does not take (over 64 fields, a field wanted twice)."""
    if schema.get("type") != "record" or len(set(wanted)) != len(wanted):
        return None
    fields = schema.get("fields", [])
    names = [f["name"] for f in fields]
    if not set(wanted) <= set(names) or len(fields) > 64:
        return None
    plan, slots = bytearray(), bytearray()
    for field in fields:
        kind = _branch(field["type"])
        if kind is None:
            return None
        primitive, null = kind
        plan += _PLAN_TYPES[primitive] + (b"-" if null is None else str(null).encode())
        slots.append(wanted.index(field["name"]) if field["name"] in wanted else _SKIPPED)
    return bytes(plan), bytes(slots)
