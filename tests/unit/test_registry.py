"""The versioned view registry: NAME and NAME@N lookups, listing every version, views modules
named in FRESHET_VIEWS, and the errors that name what is registered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from freshet.dsl.definitions import Aggregation, Feature
from freshet.dsl.registry import Registry, RegistryError, UnknownViewError, parse_view_ref
from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON

V2 = replace(
    CARD_TXN,
    version=2,
    features=(*CARD_TXN.features, Feature("amount_min_1h", Aggregation.MIN, "amount", window="1h")),
)


def test_a_name_resolves_to_its_newest_version_and_name_at_n_to_that_version() -> None:
    registry = Registry([CARD_TXN, CARD_TXN_JSON, V2])

    assert registry.get("card_txn") is V2
    assert registry.get("card_txn@1") is CARD_TXN
    assert registry.get("card_txn@v2") is V2
    assert registry.get("card_txn", 1) is CARD_TXN
    assert registry.get("card_txn_json") is CARD_TXN_JSON


def test_every_version_is_listed_each_names_versions_ascending() -> None:
    registry = Registry([V2, CARD_TXN_JSON, CARD_TXN])

    assert [(v.name, v.version) for v in registry.all()] == [
        ("card_txn", 1),
        ("card_txn", 2),
        ("card_txn_json", 1),
    ]
    # A mapping by name built from the list keeps the newest, as the endpoint builds one.
    assert {v.name: v for v in registry.all()}["card_txn"] is V2


def test_unknown_names_and_versions_name_what_is_registered() -> None:
    registry = Registry([CARD_TXN, V2])

    with pytest.raises(UnknownViewError, match="unknown view 'user_txn'; known: card_txn"):
        registry.get("user_txn")
    with pytest.raises(
        UnknownViewError,
        match="unknown version 3 of view 'card_txn'; known: card_txn@1, card_txn@2",
    ):
        registry.get("card_txn@3")
    with pytest.raises(UnknownViewError, match="unknown view 'card_txn@x'"):
        registry.get("card_txn@x")
    with pytest.raises(RegistryError, match="names version 1, but version=2"):
        registry.get("card_txn@1", 2)


def test_a_version_cannot_be_redefined_but_the_same_definition_registers_again() -> None:
    registry = Registry([CARD_TXN])
    registry.add(CARD_TXN)

    with pytest.raises(RegistryError, match="version 1 is already registered"):
        registry.add(replace(CARD_TXN, ttl_seconds=1))


def test_views_modules_named_in_the_environment_are_registered(tmp_path: Path) -> None:
    module = tmp_path / "team_views.py"
    module.write_text(
        "from dataclasses import replace\n"
        "from freshet.dsl.views import CARD_TXN\n"
        "CARD_TXN_V2 = replace(CARD_TXN, version=2, ttl_seconds=3600)\n"
    )
    registry = Registry([CARD_TXN])

    registry.load({"FRESHET_VIEWS": f" {module} , "})

    assert registry.get("card_txn").version == 2
    assert registry.get("card_txn").ttl_seconds == 3600
    assert [v.version for v in registry.versions("card_txn")] == [1, 2]


def test_a_views_module_that_cannot_load_or_has_no_views_is_an_error_naming_it(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")

    with pytest.raises(RegistryError, match=r"cannot load views module .*broken.py.*boom"):
        Registry().load({"FRESHET_VIEWS": str(broken)})
    with pytest.raises(RegistryError, match="defines no FeatureView"):
        Registry().load({"FRESHET_VIEWS": str(empty)})
    with pytest.raises(RegistryError, match="no_such_module"):
        Registry().load({"FRESHET_VIEWS": "no_such_module"})


def test_view_references() -> None:
    assert parse_view_ref("card_txn") == ("card_txn", None)
    assert parse_view_ref("card_txn@12") == ("card_txn", 12)
    with pytest.raises(RegistryError, match="NAME@VERSION"):
        parse_view_ref("card_txn@")
