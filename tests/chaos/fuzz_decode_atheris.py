"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer), outside CI.

Same checks as ``tests/unit/test_decode_fuzz.py`` (every record once, as a usable event or a
sendable dead letter; nothing raises), driven by atheris' coverage feedback over fastavro,
orjson and ``freshet.decode.decoder``. Needs ``pip install -e '.[fuzz]'``; run for a minute::

    .venv/bin/python tests/chaos/fuzz_decode_atheris.py -max_total_time=60

libFuzzer's options apply (``-runs=N``, ``-jobs``, a corpus directory as argument). A finding
stops the run with the input written to ``crash-<sha1>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import fastavro  # noqa: F401  (instrumented for coverage)
    import orjson  # noqa: F401

    from freshet.decode import decoder as decode  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_decode_fuzz import (
    AVRO,
    AVRO_VIEW,
    JSON,
    JSON_VIEW,
    check_decoded,
    messages_of,
)


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    values: list[bytes | None] = []
    for _ in range(provider.ConsumeIntInRange(1, 8)):
        size = provider.ConsumeIntInRange(0, 200)
        values.append(None if size == 0 and provider.ConsumeBool() else provider.ConsumeBytes(size))
    messages = messages_of(values)
    check_decoded(AVRO_VIEW, messages, AVRO.decode(messages))
    check_decoded(JSON_VIEW, messages, JSON.decode(messages))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
