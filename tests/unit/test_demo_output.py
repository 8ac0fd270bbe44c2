"""What ``freshet demo`` shows: a live table readable at 80 columns, and a ``freshet`` command
the user's shell can run."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from freshet.cli.demo import _freshet_command, _header, _table
from freshet.dsl.views import CARD_TXN

_CARDS = [f"card_{k:06d}" for k in (17, 3, 1_204, 88, 9_999, 42, 5, 731)]
# The widest values a busy demo card gets (a 60 s demo at 2,000/s: ~12,000 events on one card).
_WIDE = {
    "txn_count_5m": 12_345,
    "amount_sum_1h": 123_456.78,
    "amount_mean_1h": 1_234.56,
    "amount_max_24h": 98_765.43,
    "merchant_last": "merchant_199",
    "merchant_distinct_24h": 200,
}
_METRICS = {
    'freshet_events_in_total{view="card_txn"}': 119_874.0,
    'freshet_rows_emitted_total{view="card_txn"}': 121_003.0,
    'freshet_events_late_total{view="card_txn"}': 1_198.0,
    'freshet_dead_letters_total{view="card_txn",reason="decode"}': 601.0,
    'freshet_freshness_seconds_bucket{view="card_txn",le="0.25"}': 100_000.0,
    'freshet_freshness_seconds_count{view="card_txn"}': 119_874.0,
}


class _Reader:
    """The two methods of RedisFeatureReader the table uses, over fixed lookups."""

    def __init__(self, missing: Sequence[str] = ()) -> None:
        self._missing = set(missing)

    def layout(self, view: str) -> Any:
        return CARD_TXN.layout()

    def get_many(self, view: str, entities: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {"entity": e, "found": False, "age_ms": None, "features": {}}
            if e in self._missing
            else {"entity": e, "found": True, "age_ms": 12_345, "features": dict(_WIDE)}
            for e in entities
        ]


def _render(console: Console, reader: _Reader) -> list[str]:
    console.print(_table(reader, _CARDS, _METRICS, 120_000))  # type: ignore[arg-type]
    return console.export_text().splitlines()


def _assert_readable(lines: list[str], width: int) -> None:
    assert max(map(len, lines)) <= width, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text, text  # nothing cut short
    for card in _CARDS:
        assert card in text
    # The header (the lines above the first card) holds each name's lines, whole.
    header = lines[1 : next(i for i, line in enumerate(lines) if line.startswith("card_"))]
    fragments = [f for name in CARD_TXN.layout().feature_names for f in _header(name).split()]
    assert sorted(" ".join(header).split()) == sorted(["card", "age", *fragments]), header
    for value in ("12345", "123,456.78", "1,234.56", "98,765.43", "merchant_199", "12.3 s"):
        assert value in text


def test_the_live_table_keeps_ids_and_feature_names_whole_at_80_columns() -> None:
    console = Console(file=io.StringIO(), width=80, record=True)
    _assert_readable(_render(console, _Reader(missing=_CARDS[-1:])), 80)


def test_the_live_table_follows_columns_80_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    console = Console(file=io.StringIO(), record=True)
    assert console.width == 80
    _assert_readable(_render(console, _Reader()), 80)


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("txn_count_5m", ["txn_", "count_5m"]),
        ("amount_sum_1h", ["amount_", "sum_1h"]),
        ("merchant_distinct_24h", ["merchant_", "distinct_", "24h"]),
        ("last", ["last"]),
        ("a_very_long_name_without_breaks", ["a_very_", "long_", "name_", "without_", "breaks"]),
    ],
)
def test_a_header_breaks_after_underscores_and_joins_back_to_the_name(
    name: str, lines: list[str]
) -> None:
    assert _header(name).split("\n") == lines
    assert "".join(lines) == name


def _venv(tmp_path: Path) -> Path:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    (bin_dir / "freshet").touch()
    return bin_dir


def test_the_freshet_command_is_the_venvs_script_relative_to_the_cwd(tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path)
    command = _freshet_command(str(bin_dir / "python"), cwd=tmp_path, which=lambda _: None)
    assert command == ".venv/bin/freshet"


def test_the_freshet_command_is_an_absolute_path_outside_the_cwd(tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = _freshet_command(
        str(bin_dir / "python"), cwd=elsewhere, which=lambda _: "/usr/local/bin/freshet"
    )
    assert command == str((bin_dir / "freshet").resolve())


def test_the_freshet_command_is_its_bare_name_when_path_finds_that_script(
    tmp_path: Path,
) -> None:
    bin_dir = _venv(tmp_path)
    command = _freshet_command(
        str(bin_dir / "python"), cwd=tmp_path, which=lambda _: str(bin_dir / "freshet")
    )
    assert command == "freshet"
