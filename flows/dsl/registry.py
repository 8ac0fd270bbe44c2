"""The registry of feature views: look a view version up, list them, describe them as JSON.

Pure and Bytewax-free, so the serving path may import it.

Versions. A view is registered per ``(name, version)``; each version has its own Redis key
space and offline log (``freshet.sinks.redis_store``, ``freshet.sinks.parquet_log.log_dir``), so a
new version can be backfilled and verified beside the old one. :func:`get_view` takes ``"card_txn"``
(the newest version) or ``"card_txn@2"`` (that version), so every command taking a view name takes
``VIEW@N`` too. :func:`all_views` and :func:`views_json` list every version, names in
registration order and each name's versions ascending: a mapping built from them by name keeps
the newest version, as :func:`get_view` does.

Where views come from: the modules named in ``FRESHET_VIEWS`` (comma-separated; a dotted
module name such as ``my_views`` or ``myteam.features``, importable from the installed packages
or from the current directory, or a path to a ``.py`` file). Such a module lists its views in
``VIEWS`` (a sequence of :class:`FeatureView`) or, without it, every ``FeatureView`` the module
defines is taken (module-level names first, then those defined as bare statements). With
``FRESHET_VIEWS`` unset (or empty) the shipped demo views (:mod:`freshet.dsl.views`) are
registered instead; to have both, name them:
``FRESHET_VIEWS=freshet.dsl.views,my_views``. So an endpoint or a ``freshet doctor`` of a
deployment knows its own views only. They are loaded once, on first use; :func:`register` adds
one more in-process (tests, notebooks).

Feature services (:class:`freshet.dsl.services.FeatureService`) come from the same modules:
``SERVICES`` (a sequence) or, without it, every module-level ``FeatureService``. They are
registered after every module's views, so a service may read views of another module, and are
checked then (:func:`freshet.dsl.services.bind_service`: an unknown view, version or feature
raises ``DefinitionError`` naming it). :func:`get_service` returns the resolved
:class:`~freshet.dsl.services.ServicePlan` (a ``view:feature`` without ``@N`` reads the newest
version registered when it is asked for).

Errors: :class:`UnknownViewError` (a ``KeyError``) for a name or version that is not
registered, naming what is; :class:`UnknownServiceError` likewise for services;
:class:`RegistryError` (a ``ValueError``) for a bad reference, a ``FRESHET_VIEWS`` module that
cannot be loaded, or a conflicting registration.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import threading
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from freshet.dsl.definitions import DEFINED, FeatureView
from freshet.dsl.services import FeatureService, ServicePlan, bind_service

__all__ = [
    "VIEWS_ENV",
    "Registry",
    "RegistryError",
    "UnknownServiceError",
    "UnknownViewError",
    "all_services",
    "all_views",
    "get_service",
    "get_view",
    "load_views",
    "parse_view_ref",
    "register",
    "services_json",
    "views_json",
]

VIEWS_ENV = "FRESHET_VIEWS"

_REF_RE = re.compile(r"^(?P<name>[^@\s]+)(?:@v?(?P<version>\d+))?$")


class RegistryError(ValueError):
    """A view reference, a views module or a registration the registry cannot take."""


class UnknownViewError(KeyError):
    """No view has this name (or this version); the message lists what is registered."""

    def __init__(self, name: str, known: tuple[str, ...], version: int | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.known = known
        self.version = version

    def __str__(self) -> str:
        if self.version is not None:
            return (
                f"unknown version {self.version} of view {self.name!r}; "
                f"known: {', '.join(self.known)}"
            )
        return f"unknown view {self.name!r}; known: {', '.join(self.known)}"


class UnknownServiceError(KeyError):
    """No feature service has this name; the message lists the registered ones."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown service {self.name!r}; known: {', '.join(self.known) or '(none)'}"


class Registry:
    """Views by ``(name, version)``, in registration order (the module functions use one
    process-wide instance; tests may build their own)."""

    def __init__(self, views: Iterable[FeatureView] = (), *, origin: str = "Registry()") -> None:
        self._views: dict[tuple[str, int], FeatureView] = {}
        # name -> (definition, plan, the view generation the plan was bound at)
        self._services: dict[str, tuple[FeatureService, ServicePlan, int]] = {}
        self._generation = 0  # bumped by each new view version (plans rebind lazily)
        self._lock = threading.RLock()
        for view in views:
            self.add(view, origin=origin)

    def add(self, view: FeatureView, *, origin: str = "register()") -> None:
        """Register ``view``; the same definition again is a no-op, another definition under
        a registered ``(name, version)`` raises :class:`RegistryError`."""
        if not isinstance(view, FeatureView):
            raise RegistryError(f"{origin}: {view!r} is not a FeatureView")
        key = (view.name, view.version)
        with self._lock:
            existing = self._views.get(key)
            if existing is not None and existing != view:
                raise RegistryError(
                    f"{origin}: view {view.name!r} version {view.version} is already registered "
                    "with another definition; give the new definition a new version"
                )
            if existing is None:
                self._views[key] = view
                self._generation += 1

    def add_service(self, service: FeatureService, *, origin: str = "register()") -> ServicePlan:
        """Register ``service``, checked against the registered views (``DefinitionError``
        naming an unknown view or feature); the same definition again is a no-op."""
        if not isinstance(service, FeatureService):
            raise RegistryError(f"{origin}: {service!r} is not a FeatureService")
        with self._lock:
            existing = self._services.get(service.name)
            if existing is not None and existing[0] != service:
                raise RegistryError(
                    f"{origin}: service {service.name!r} is already registered with another "
                    "definition; give the new one another name (e.g. fraud_v2)"
                )
            plan = bind_service(service, self.get)
            self._services[service.name] = (service, plan, self._generation)
            return plan

    def get_service(self, name: str) -> ServicePlan:
        """The resolved service ``name``; :class:`UnknownServiceError` if none."""
        with self._lock:
            entry = self._services.get(name)
            if entry is None:
                raise UnknownServiceError(name, tuple(self._services))
            service, plan, generation = entry
            if generation != self._generation:
                plan = bind_service(service, self.get)
                self._services[name] = (service, plan, self._generation)
            return plan

    def services(self) -> tuple[ServicePlan, ...]:
        """Every registered service, resolved, in registration order."""
        return tuple(self.get_service(name) for name in list(self._services))

    def load(self, environ: Mapping[str, str]) -> None:
        """Register the views of the modules named in ``environ[FRESHET_VIEWS]``, or the demo
        views when it names none."""
        specs = [s.strip() for s in environ.get(VIEWS_ENV, "").split(",") if s.strip()]
        if not specs:
            from freshet.dsl.views import DEMO_VIEWS

            for view in DEMO_VIEWS:
                self.add(view, origin="freshet.dsl.views")
            return
        services: list[tuple[FeatureService, str]] = []
        for spec in specs:
            try:
                module = _import(spec)
            except RegistryError:
                raise
            except Exception as exc:
                raise RegistryError(
                    f"{VIEWS_ENV}: cannot load views module {spec!r}: {type(exc).__name__}: {exc}"
                ) from exc
            views = _module_views(module)
            module_services = _module_services(module)
            if not views and not module_services:
                raise RegistryError(
                    f"{VIEWS_ENV}: module {spec!r} defines no FeatureView (list them in VIEWS) "
                    "nor FeatureService (SERVICES)"
                )
            for view in views:
                self.add(view, origin=f"{VIEWS_ENV} module {spec!r}")
            services += [(service, spec) for service in module_services]
        # After every module's views: a service may read views of another module.
        for service, spec in services:
            self.add_service(service, origin=f"{VIEWS_ENV} module {spec!r}")

    def get(self, name: str, version: int | None = None) -> FeatureView:
        """See :func:`get_view`."""
        try:
            base, ref_version = parse_view_ref(name)
        except RegistryError:
            raise UnknownViewError(str(name), self.names()) from None
        if version is not None and ref_version is not None and version != ref_version:
            raise RegistryError(f"{name!r} names version {ref_version}, but version={version}")
        wanted = ref_version if version is None else version
        versions = self.versions(base)
        if not versions:
            raise UnknownViewError(base, self.names())
        if wanted is None:
            return versions[-1]
        for view in versions:
            if view.version == wanted:
                return view
        raise UnknownViewError(base, tuple(f"{v.name}@{v.version}" for v in versions), wanted)

    def all(self) -> tuple[FeatureView, ...]:
        """See :func:`all_views`."""
        names: dict[str, list[FeatureView]] = {}
        for (name, _), view in list(self._views.items()):
            names.setdefault(name, []).append(view)
        return tuple(v for vs in names.values() for v in sorted(vs, key=lambda v: v.version))

    def versions(self, name: str) -> list[FeatureView]:
        """The registered versions of ``name``, ascending."""
        return sorted(
            (v for (n, _), v in list(self._views.items()) if n == name), key=lambda v: v.version
        )

    def names(self) -> tuple[str, ...]:
        """The registered view names, in registration order."""
        return tuple(dict.fromkeys(name for name, _ in list(self._views)))


_REGISTRY = Registry()
_loaded = False
_load_lock = threading.Lock()


def parse_view_ref(ref: str) -> tuple[str, int | None]:
    """``"card_txn"`` -> ``("card_txn", None)``; ``"card_txn@2"`` (or ``@v2``) ->
    ``("card_txn", 2)``."""
    match = _REF_RE.match(ref.strip()) if isinstance(ref, str) else None
    if match is None:
        raise RegistryError(f"{ref!r} is not a view reference; use NAME or NAME@VERSION")
    version = match["version"]
    return match["name"], None if version is None else int(version)


def _module_views(module: ModuleType) -> list[FeatureView]:
    listed = getattr(module, "VIEWS", None)
    if listed is not None:
        if isinstance(listed, FeatureView) or not isinstance(listed, Iterable):
            raise RegistryError(
                f"{module.__name__}.VIEWS must be a sequence of FeatureView, got {listed!r}"
            )
        return list(listed)
    named = [v for v in vars(module).values() if isinstance(v, FeatureView)]
    # Views defined in the module without a name (a bare ``FeatureView(...)`` statement).
    bare = [v for m, v in DEFINED if m == module.__name__ and all(v is not n for n in named)]
    return named + bare


def _module_services(module: ModuleType) -> list[FeatureService]:
    listed = getattr(module, "SERVICES", None)
    if listed is not None:
        if isinstance(listed, FeatureService) or not isinstance(listed, Iterable):
            raise RegistryError(
                f"{module.__name__}.SERVICES must be a sequence of FeatureService, got {listed!r}"
            )
        return list(listed)
    return [v for v in vars(module).values() if isinstance(v, FeatureService)]


def _import(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).expanduser().resolve()
        name = f"freshet_views_{zlib.crc32(str(path).encode()):08x}"
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None or not path.is_file():
            raise RegistryError(f"{VIEWS_ENV}: {spec!r} is not a readable Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    _importable_from_cwd()
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (spec == exc.name or spec.startswith(f"{exc.name}.")):
            raise  # the module was found; one of its own imports is missing
        raise RegistryError(
            f"{VIEWS_ENV}: no module {spec!r} in the current directory ({os.getcwd()}) or the "
            f"installed packages; run from the directory holding {spec.split('.')[0]}.py (or "
            "its package), or name the file: FRESHET_VIEWS=path/to/views.py"
        ) from exc


def _importable_from_cwd() -> None:
    """Let ``FRESHET_VIEWS=my_views`` find ``./my_views.py`` as ``python -m`` would, also under
    the ``freshet`` console script (whose ``sys.path[0]`` is its bin directory). Appended, not
    prepended: an installed package of the same name (``freshet`` itself) still wins."""
    cwd = os.getcwd()
    here = {os.path.realpath(p or ".") for p in sys.path}
    if os.path.realpath(cwd) not in here:
        sys.path.append(cwd)


def load_views(environ: Mapping[str, str] | None = None) -> None:
    """Register the views of the modules named in ``FRESHET_VIEWS`` of ``environ`` (default:
    ``os.environ``). Idempotent; called on first use of the registry."""
    _REGISTRY.load(os.environ if environ is None else environ)


def _registry() -> Registry:
    global _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                load_views()
                _loaded = True
    return _REGISTRY


_Definition = TypeVar("_Definition", FeatureView, FeatureService)


def register(view: _Definition) -> _Definition:
    """Add ``view`` (a new name or a new version of one), or a feature service (checked
    against the registered views); returns it. Registering the same definition again is a
    no-op; another definition under a registered version (or service name) is an error."""
    if isinstance(view, FeatureService):
        _registry().add_service(view, origin="register()")
    else:
        _registry().add(view, origin="register()")
    return view


def get_service(name: str) -> ServicePlan:
    """The registered feature service ``name``, resolved against the views.

    Raises :class:`UnknownServiceError` naming the registered services."""
    return _registry().get_service(name)


def all_services() -> tuple[ServicePlan, ...]:
    """Every registered feature service, resolved, in registration order."""
    return _registry().services()


def services_json() -> list[dict[str, Any]]:
    """The content of ``freshet views --services --json`` and ``GET /v1/services``."""
    return [plan.to_json() for plan in _registry().services()]


def get_view(name: str, version: int | None = None) -> FeatureView:
    """The view ``name`` (``NAME`` or ``NAME@VERSION``) at ``version``, else its newest version.

    Raises :class:`UnknownViewError` naming the registered views (or the name's versions).
    """
    return _registry().get(name, version)


def all_views() -> tuple[FeatureView, ...]:
    """Every registered version of every view: names in registration order, versions
    ascending (so the last view of each name is its newest)."""
    return _registry().all()


def views_json() -> list[dict[str, Any]]:
    """The content of ``freshet views --json`` and ``GET /v1/views``: one dict per view
    version, in :func:`all_views` order."""
    return [view.to_json() for view in _registry().all()]
