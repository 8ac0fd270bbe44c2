"""``freshet.serving.client.to_pandas``: lookup results as a DataFrame, pandas optional."""

from __future__ import annotations

import sys

import pytest

from freshet.serving.client import to_pandas

RESULTS = [
    {"view": "v", "entity": "u1", "found": True, "as_of": 1_000, "age_ms": 5,
     "features": {"n": 3, "s": 49.75}, "status": {"n": "present", "s": "present"}},
    {"view": "v", "entity": "u2", "found": False, "as_of": None, "age_ms": None,
     "features": {"n": None, "s": None}, "status": {"n": "not_found", "s": "not_found"}},
]  # fmt: skip


def test_without_pandas_to_pandas_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # what an install without it looks like

    with pytest.raises(ImportError, match=r"pip install 'freshet\[pandas\]'"):
        to_pandas(RESULTS)


def test_results_become_one_row_per_entity_with_a_column_per_feature() -> None:
    pytest.importorskip("pandas")  # the freshet[pandas] extra

    frame = to_pandas(RESULTS)

    assert list(frame.columns) == ["entity", "found", "as_of", "age_ms", "n", "s"]
    assert frame["entity"].tolist() == ["u1", "u2"]
    assert frame.loc[0, "s"] == 49.75
    assert len(to_pandas(RESULTS[0])) == 1
