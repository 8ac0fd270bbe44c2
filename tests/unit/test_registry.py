"""The versioned view registry: NAME and NAME@N lookups, listing every version, views modules
named in FRESHET_VIEWS, and the errors that name what is registered."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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


# --- FRESHET_VIEWS: dotted names from the current directory, demo views only when unset ------


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path`` as the current directory; ``sys.path`` and ``sys.modules`` restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _write_views(path: Path, name: str = "team_txn") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "from dataclasses import replace\n"
        "from freshet.dsl.views import CARD_TXN\n"
        f"VIEWS = [replace(CARD_TXN, name={name!r})]\n"
    )


def test_a_dotted_module_name_is_imported_from_the_current_directory(here: Path) -> None:
    _write_views(here / "my_views_cwd.py")
    _write_views(here / "team" / "features_cwd.py", name="team_features")
    (here / "team" / "__init__.py").write_text("")

    registry = Registry()
    registry.load({"FRESHET_VIEWS": "my_views_cwd, team.features_cwd"})

    assert registry.names() == ("team_txn", "team_features")
    # Appended, not prepended: installed packages (freshet first) are never shadowed.
    assert sys.path[-1] == str(here)
    assert sys.path.count(str(here)) == 1


def test_the_demo_views_are_registered_only_when_freshet_views_is_unset_or_names_them(
    here: Path,
) -> None:
    _write_views(here / "my_views_demo.py")

    unset, empty, own, both = Registry(), Registry(), Registry(), Registry()
    unset.load({})
    empty.load({"FRESHET_VIEWS": " "})
    own.load({"FRESHET_VIEWS": "my_views_demo"})
    both.load({"FRESHET_VIEWS": "freshet.dsl.views,my_views_demo"})

    assert unset.names() == empty.names() == ("card_txn", "card_txn_json")
    assert own.names() == ("team_txn",)
    assert both.names() == ("card_txn", "card_txn_json", "team_txn")
    with pytest.raises(UnknownViewError, match="unknown view 'card_txn'; known: team_txn"):
        own.get("card_txn")


def test_a_dotted_name_that_is_not_found_says_where_it_was_looked_for(here: Path) -> None:
    (here / "needs_more.py").write_text("import no_such_dependency_xyz\n")

    with pytest.raises(RegistryError) as missing:
        Registry().load({"FRESHET_VIEWS": "my_viewz"})
    with pytest.raises(RegistryError) as broken:
        Registry().load({"FRESHET_VIEWS": "needs_more"})

    assert f"no module 'my_viewz' in the current directory ({here})" in str(missing.value)
    assert "FRESHET_VIEWS=path/to/views.py" in str(missing.value)
    # A module that exists but fails its own imports is reported as that failure.
    assert "cannot load views module 'needs_more'" in str(broken.value)
    assert "no_such_dependency_xyz" in str(broken.value)
