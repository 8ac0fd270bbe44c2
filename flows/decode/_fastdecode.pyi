from collections.abc import Callable, Sequence
from typing import Any

def decode_avro(
    messages: Sequence[Any],
    plan: bytes,
    slots: bytes,
    skip: int,
    schema_ids: frozenset[int] | None,
    slow: Callable[[Any], Any],
    max_entity_length: int,
    /,
) -> list[Any]: ...
def shard_groups(events: Sequence[Any], shards: int, /) -> dict[int, list[Any]]: ...
