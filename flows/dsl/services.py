"""Feature services: the features one model reads, across views, plus request-time features.

A service names features of several views, the fields a caller sends with each request, and
derived (on-demand) features computed from both at lookup time::

    from freshet import FeatureService

    FRAUD_V1 = FeatureService(
        name="fraud_v1",
        features=("card_txn:txn_count_5m", "card_txn:amount_mean_1h", "card_merchant:*"),
        request=("amount",),  # float64; or request={"amount": "float64", "channel": "string"}
        derived={"amount_vs_mean": "request.amount / card_txn.amount_mean_1h"},
    )

``features`` entries are ``view:feature``, ``view:*`` (all of the view's features) or
``view@N:feature`` (version ``N`` of the view; without ``@N`` the newest registered version).
Each feature is returned as ``<view>__<feature>`` (so one view cannot appear at two versions in
one service). ``request`` names the request fields: a sequence of names (each ``float64``) or a
mapping of name to type (``int64``, ``float64``, ``string``, ``bool``); every row of a lookup
must carry each of them (``null`` is allowed and reads as null). ``derived`` maps names to
expressions of :mod:`freshet.dsl.expressions` over the service's features, read as dotted
names (``card_txn.amount_mean_1h``; every feature of a ``view:*`` entry is readable) and the
request fields (``request.amount``). A feature value that is missing (entity not found, value
expired) is null; the language's null rules apply (null in, null out; division by zero is null).

Checked in two steps, each with a :class:`~freshet.dsl.definitions.DefinitionError` naming the
bad part: when defined (names, references, types, expression syntax), and when registered,
against the registered views (:func:`bind_service`: unknown views, versions and features,
expression types). Registering yields a :class:`ServicePlan`, what the endpoint
(``POST /v1/services/{name}``) and ``freshet historical --service`` both run: the same compiled
functions compute the derived features on both paths.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from freshet.dsl.definitions import DefinitionError, FeatureView, _check_name
from freshet.dsl.expressions import (
    Expression,
    ExpressionError,
    ExprType,
    NameType,
    compile_expression,
)
from freshet.sinks.layout import ViewLayout

__all__ = [
    "REQUEST_TYPES",
    "DerivedFeature",
    "FeatureRef",
    "FeatureService",
    "RequestValueError",
    "ServicePlan",
    "ServiceView",
    "bind_service",
]

RequestType = Literal["int64", "float64", "string", "bool"]
REQUEST_TYPES: tuple[str, ...] = ("int64", "float64", "string", "bool")
# Derived expressions read request fields as ``request.<field>``.
REQUEST = "request"

_NAME = r"[a-z][a-z0-9_]{0,62}"
_REF_RE = re.compile(rf"^(?P<view>{_NAME})(?:@v?(?P<version>[0-9]+))?:(?P<feature>\*|{_NAME})$")
_INT64 = range(-(2**63), 2**63)
# Feature value types an expression can read (lists and top-k pairs cannot be).
_EXPRESSIBLE = ("int64", "float64", "string")


class RequestValueError(ValueError):
    """A request field's value does not have the field's declared type."""


@dataclass(frozen=True, slots=True)
class FeatureRef:
    """One ``features`` entry: ``view[@version]:feature`` (``feature`` ``*`` for all)."""

    view: str
    version: int | None
    feature: str

    @property
    def view_ref(self) -> str:
        """``NAME`` or ``NAME@VERSION``, as the registry takes it."""
        return self.view if self.version is None else f"{self.view}@{self.version}"

    def __str__(self) -> str:
        return f"{self.view_ref}:{self.feature}"


@dataclass(frozen=True, slots=True)
class FeatureService:
    """A model's features across views, its request fields and derived features (see the
    module docstring). ``request`` and ``derived`` are kept as tuples of pairs."""

    name: str
    features: Any
    request: Any = ()
    derived: Any = ()
    refs: tuple[FeatureRef, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_name(self.name, what="FeatureService.name")
        where = f"service {self.name!r}"
        features = self.features
        if isinstance(features, str) or not isinstance(features, Sequence) or not features:
            raise DefinitionError(
                f"{where}: features={features!r} must be a non-empty sequence of "
                "'view:feature' strings (or 'view:*', 'view@N:feature')"
            )
        refs: list[FeatureRef] = []
        for entry in features:
            match = _REF_RE.match(entry) if isinstance(entry, str) else None
            if match is None:
                raise DefinitionError(
                    f"{where}: feature {entry!r} is not 'view:feature', 'view:*' or "
                    "'view@N:feature' (names: lowercase letters, digits and '_')"
                )
            version = None if match["version"] is None else int(match["version"])
            if version is not None and version < 1:
                raise DefinitionError(f"{where}: feature {entry!r}: versions start at 1")
            ref = FeatureRef(match["view"], version, match["feature"])
            if ref in refs:
                raise DefinitionError(f"{where}: feature {entry!r} is listed twice")
            refs.append(ref)
        object.__setattr__(self, "features", tuple(features))
        object.__setattr__(self, "refs", tuple(refs))
        object.__setattr__(self, "request", _request_fields(self.request, where))
        object.__setattr__(self, "derived", _derived(self.derived, where, self.request))

    @property
    def request_types(self) -> dict[str, RequestType]:
        return dict(self.request)

    def to_json(self) -> dict[str, Any]:
        """The definition as written (``features`` entries, ``request`` types, ``derived``
        expressions verbatim)."""
        return {
            "name": self.name,
            "features": list(self.features),
            "request": dict(self.request),
            "derived": dict(self.derived),
        }


def _request_fields(request: Any, where: str) -> tuple[tuple[str, RequestType], ...]:
    if isinstance(request, str):
        raise DefinitionError(
            f"{where}: request={request!r} must be a sequence of field names or a mapping of "
            f"name -> type ({', '.join(REQUEST_TYPES)}), e.g. request=({request!r},)"
        )
    if isinstance(request, Mapping):
        pairs = list(request.items())
    else:
        try:
            pairs = [
                (item, "float64") if isinstance(item, str) else tuple(item) for item in request
            ]
        except TypeError:
            raise DefinitionError(
                f"{where}: request={request!r} must be a sequence of field names or a mapping "
                f"of name -> type ({', '.join(REQUEST_TYPES)})"
            ) from None
    out: list[tuple[str, RequestType]] = []
    for pair in pairs:
        if len(pair) != 2:
            raise DefinitionError(f"{where}: request field {pair!r} is not a name or (name, type)")
        name, kind = pair
        _check_name(name, what=f"{where}: request field")
        if kind not in REQUEST_TYPES:
            raise DefinitionError(
                f"{where}: request field {name!r} has type {kind!r}; "
                f"types: {', '.join(REQUEST_TYPES)}"
            )
        if any(name == seen for seen, _ in out):
            raise DefinitionError(f"{where}: request field {name!r} is declared twice")
        out.append((name, cast(RequestType, kind)))
    return tuple(out)


def _derived(
    derived: Any, where: str, request: tuple[tuple[str, RequestType], ...]
) -> tuple[tuple[str, str], ...]:
    if isinstance(derived, Mapping):
        pairs = list(derived.items())
    else:
        try:
            pairs = [tuple(pair) for pair in derived]
        except TypeError:
            raise DefinitionError(
                f"{where}: derived={derived!r} must be a mapping of name -> expression"
            ) from None
    out: list[tuple[str, str]] = []
    requested = {name for name, _ in request}
    for pair in pairs:
        if len(pair) != 2:
            raise DefinitionError(f"{where}: derived={derived!r} must map names to expressions")
        name, text = pair
        _check_name(name, what=f"{where}: derived feature name")
        if "__" in name:
            raise DefinitionError(
                f"{where}: derived feature {name!r}: '__' is kept for <view>__<feature> names"
            )
        if name in requested or any(name == seen for seen, _ in out):
            raise DefinitionError(
                f"{where}: derived feature {name!r} is already a request field or derived "
                "feature; pick another name"
            )
        if not isinstance(text, str):
            raise DefinitionError(
                f"{where}: derived feature {name!r} must be an expression string; got {text!r}"
            )
        try:
            ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise DefinitionError(
                f"{where}: derived feature {name!r}: {text!r} is not an expression: {exc.msg}"
            ) from None
        out.append((name, text))
    return tuple(out)


# --- Bound to the registered views: what lookups and training sets run --------------------------


@dataclass(frozen=True, slots=True)
class ServiceView:
    """The features a service reads from one view version; ``columns`` are their output
    names, ``<view>__<feature>``."""

    layout: ViewLayout
    features: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def version(self) -> int:
        return self.layout.version

    @property
    def ref(self) -> str:
        """``NAME@VERSION``: the endpoint knows every registered version by it."""
        return f"{self.layout.name}@{self.layout.version}"


@dataclass(frozen=True, slots=True)
class DerivedFeature:
    """A compiled derived feature: ``function(*[row[c] for c in inputs])`` is its value for a
    row holding feature columns (``<view>__<feature>``) and request fields (by name)."""

    name: str
    expression: Expression
    inputs: tuple[str, ...]
    function: Callable[..., Any] = field(repr=False, compare=False)

    @property
    def type(self) -> ExprType:
        return self.expression.type


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """A :class:`FeatureService` resolved against the registered views (:func:`bind_service`).

    ``keys`` are the key fields of all its views (in order of first use), ``columns`` the
    output names: every view feature as ``<view>__<feature>``, then the derived features.
    """

    service: FeatureService
    views: tuple[ServiceView, ...]
    keys: tuple[str, ...]
    derived: tuple[DerivedFeature, ...]
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def request(self) -> tuple[tuple[str, RequestType], ...]:
        return cast(tuple[tuple[str, RequestType], ...], self.service.request)

    def request_value(self, name: str, kind: RequestType, value: Any) -> Any:
        """``value`` of request field ``name`` as its declared type (an int for a float64
        field becomes a float); raises :class:`RequestValueError` when it has another type.
        ``None`` is null."""
        if value is None:
            return None
        if kind == "float64":
            if isinstance(value, float) or (type(value) is int and value in _INT64):
                return float(value)
        elif kind == "int64":
            if type(value) is int and value in _INT64:
                return value
        elif kind == "string":
            if isinstance(value, str):
                return value
        elif isinstance(value, bool):
            return value
        raise RequestValueError(
            f"request field {name!r} is {value!r}; it is {kind} (service {self.name!r})"
        )

    def derive(self, row: Mapping[str, Any]) -> list[Any]:
        """The derived features of one row (feature columns and request fields by name)."""
        return [d.function(*[row[c] for c in d.inputs]) for d in self.derived]

    def to_json(self) -> dict[str, Any]:
        """``freshet views --services --json`` and ``GET /v1/services``: the definition and
        what it resolved to (view versions, key fields, output columns and types)."""
        types: dict[str, str] = {}
        for view in self.views:
            by_name = {f.name: f.type for f in view.layout.features}
            for feature, column in zip(view.features, view.columns, strict=True):
                types[column] = by_name[feature]
        for derived in self.derived:
            types[derived.name] = derived.type
        return {
            **self.service.to_json(),
            "views": [
                {"name": v.name, "version": v.version, "features": list(v.features)}
                for v in self.views
            ],
            "keys": list(self.keys),
            "columns": [{"name": c, "type": types[c]} for c in self.columns],
        }


def bind_service(service: FeatureService, resolve: Callable[[str], FeatureView]) -> ServicePlan:
    """Resolve ``service`` against views: ``resolve`` maps ``NAME`` or ``NAME@N`` to a view and
    raises ``KeyError`` (the registry's ``UnknownViewError``) for an unknown one. Raises
    :class:`DefinitionError` naming the unknown view, version or feature, a view used at two
    versions, a clash of output names, or a derived expression that does not type-check."""
    where = f"service {service.name!r}"
    chosen: dict[str, FeatureView] = {}
    wanted: dict[str, list[str]] = {}
    for ref in service.refs:
        try:
            view = resolve(ref.view_ref)
        except KeyError as exc:
            raise DefinitionError(f"{where}: feature '{ref}': {exc}") from None
        if ref.view == REQUEST:
            raise DefinitionError(f"{where}: a view named {REQUEST!r} clashes with request.<field>")
        earlier = chosen.setdefault(view.name, view)
        if earlier.version != view.version:
            raise DefinitionError(
                f"{where}: view {view.name!r} is used at versions {earlier.version} and "
                f"{view.version}; a service reads one version of a view (pin it with "
                f"'{view.name}@N:feature' everywhere)"
            )
        names = view.layout().feature_names
        if ref.feature == "*":
            picked = list(names)
        elif ref.feature in names:
            picked = [ref.feature]
        else:
            raise DefinitionError(
                f"{where}: feature '{ref}': view {view.name!r} (version {view.version}) has no "
                f"feature {ref.feature!r}; its features: {', '.join(names)}"
            )
        features = wanted.setdefault(view.name, [])
        for name in picked:
            if name in features:
                if ref.feature == "*":
                    continue
                raise DefinitionError(f"{where}: feature '{ref}' is listed twice")
            features.append(name)
    views: list[ServiceView] = []
    keys: list[str] = []
    env: dict[str, NameType] = {}
    column_of: dict[str, str] = {}  # expression name -> row column
    for name, features in wanted.items():
        layout = chosen[name].layout()
        ordered = tuple(f for f in layout.feature_names if f in features)
        columns = tuple(f"{name}__{f}" for f in ordered)
        views.append(ServiceView(layout, ordered, columns))
        keys += [k for k in layout.keys if k not in keys]
        types = {f.name: f.type for f in layout.features}
        for feature, column in zip(ordered, columns, strict=True):
            if types[feature] in _EXPRESSIBLE:
                env[f"{name}.{feature}"] = NameType(cast(ExprType, types[feature]), True)
                column_of[f"{name}.{feature}"] = column
    request_names = [name for name, _ in service.request]
    for name, kind in service.request:
        env[f"{REQUEST}.{name}"] = NameType(cast(ExprType, kind), True)
        column_of[f"{REQUEST}.{name}"] = name
    clash = sorted(set(request_names) & set(keys))
    if clash:
        raise DefinitionError(
            f"{where}: request field(s) {', '.join(map(repr, clash))} are key fields of its "
            "views; rows carry each key field once"
        )
    derived: list[DerivedFeature] = []
    for name, text in service.derived:
        if name in keys:
            raise DefinitionError(f"{where}: derived feature {name!r} is a key field's name")
        try:
            expression = compile_expression(
                text, env, what=f"{where}: derived feature {name!r}", dotted=True
            )
        except ExpressionError as exc:
            raise DefinitionError(str(exc)) from None
        inputs = tuple(column_of[n] for n in expression.names)
        derived.append(
            DerivedFeature(name, expression, inputs, expression.function(expression.names))
        )
    columns = tuple(c for v in views for c in v.columns) + tuple(d.name for d in derived)
    clash = sorted(set(columns) & set(request_names))
    if clash:
        raise DefinitionError(
            f"{where}: request field(s) {', '.join(map(repr, clash))} clash with feature names"
        )
    return ServicePlan(service, tuple(views), tuple(keys), tuple(derived), columns)
