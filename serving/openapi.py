"""The OpenAPI 3.0 document served at ``/openapi.json``, written by hand from the views.

Hand-written (not generated from handlers) because the app is a plain ASGI callable; the
schemas are the real ones: ``tests/integration/test_serving_schemathesis.py`` drives the
running endpoint from this document and validates every response against it.

Each feature service gets ``POST /v1/services/<name>`` with its row schema (key fields and
request fields, typed and required) and its result's feature names.

Views keyed by several fields (DESIGN "Entities") get paths of their own, with their key
fields as typed parameters: ``GET /v1/features/<view>/{k1}/{k2}`` and ``POST
/v1/features/<view>`` taking objects of key fields; the templated paths describe one-field
views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from freshet.dsl.services import ServicePlan
from freshet.sinks.layout import ENTITY_JSON_PATTERN, MAX_ENTITY_LENGTH, ViewLayout

__all__ = ["build_openapi"]


def _error_response(
    description: str, extra_headers: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if extra_headers:
        response["headers"] = dict(extra_headers)
    return response


# A feature's status in a lookup; "stale": a windowed value the flow should have replaced by now.
_STATUSES = ["present", "not_found", "expired", "stale"]
_MAX_STALENESS = {
    "type": "integer",
    "minimum": 0,
    "maximum": 86_400_000,
    "description": (
        "Windowed values more than this many ms past their valid_until come back null, status stale"
    ),
}
_MAX_STALENESS_PARAM = {
    "name": "max_staleness_ms",
    "in": "query",
    "required": False,
    "description": _MAX_STALENESS["description"],
    "schema": {"type": "integer", "minimum": 0, "maximum": 86_400_000},
}

_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}


def build_openapi(
    layouts: Mapping[str, ViewLayout],
    *,
    max_batch: int,
    auth: bool,
    version: str,
    ingest: bool = False,
    services: Sequence[ServicePlan] = (),
) -> dict[str, Any]:
    """The document for these views and ``services``; ``auth`` adds the API-key security
    requirement, ``ingest`` the ``POST /v1/ingest/{view}`` route."""
    view_names = sorted(name for name, lay in layouts.items() if not lay.is_composite)
    composite = sorted(name for name, lay in layouts.items() if lay.is_composite)
    feature_names = sorted({f for lay in layouts.values() for f in lay.feature_names})
    errors = {
        "401": _error_response("Missing or invalid API key"),
        "403": _error_response("The API key may not read this view"),
        "404": _error_response("Unknown view; the message names the known views"),
        "422": _error_response("Invalid request, e.g. unknown features (named in the message)"),
        "503": _error_response("Redis is unreachable", _RETRY_AFTER),
    }
    if not auth:
        del errors["401"], errors["403"]
    view_param = {
        "name": "view",
        "in": "path",
        "required": True,
        "description": (
            f"Feature view name (a view keyed by one field): {', '.join(view_names)}; "
            "VIEW@N (@ as %40 also) names registered version N"
        ),
        "schema": {"type": "string", "example": view_names[0] if view_names else "card_txn"},
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "freshet lookup endpoint",
            "version": version,
            "description": "Fresh per-entity feature values from the Redis online store.",
        },
        "paths": {
            "/v1/features/{view}/{entity}": {
                "get": {
                    "operationId": "getFeatures",
                    "summary": "Features of one entity",
                    "parameters": [
                        view_param,
                        {
                            "name": "entity",
                            "in": "path",
                            "required": True,
                            "description": (
                                "Entity key, percent-encoded UTF-8 without control characters "
                                f"(at most {MAX_ENTITY_LENGTH} characters; 422 otherwise)"
                            ),
                            "schema": {
                                "type": "string",
                                "maxLength": MAX_ENTITY_LENGTH,
                                "pattern": ENTITY_JSON_PATTERN,
                            },
                        },
                        _features_param(feature_names),
                        _MAX_STALENESS_PARAM,
                    ],
                    "responses": {
                        "200": {
                            "description": "The entity's features (found: false if unknown)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Lookup"}
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/v1/features/{view}": {
                "post": {
                    "operationId": "getFeaturesBatch",
                    "summary": f"Features of up to {max_batch} entities, in request order",
                    "parameters": [view_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BatchRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One lookup per requested entity, in request order",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/BatchResponse"}
                                }
                            },
                        },
                        "400": _error_response("The body is not JSON"),
                        "413": _error_response(f"More than {max_batch} entities, or body > 1 MiB"),
                        **errors,
                    },
                }
            },
            "/v1/views": {
                "get": {
                    "operationId": "listViews",
                    "summary": "The registered feature views (as `freshet views --json`)",
                    "responses": {
                        "200": {
                            "description": "Views",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"type": "object"}}
                                }
                            },
                        },
                        **{k: v for k, v in errors.items() if k == "401"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is up",
                    "security": [],
                    "responses": {"200": _status_response("ok")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Redis answers PING",
                    "security": [],
                    "responses": {
                        "200": _status_response("ready"),
                        "503": _error_response("Redis is unreachable", _RETRY_AFTER),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas(max_batch, feature_names)},
    }
    for name in composite:
        _add_composite_view(doc, layouts[name], max_batch=max_batch, errors=errors)
    if ingest:
        _add_ingest(doc, sorted(layouts), auth=auth)
    _add_services(doc, services, max_batch=max_batch, errors=errors)
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


_REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    "int64": {"type": "integer", "nullable": True},
    "float64": {"type": "number", "nullable": True},
    "string": {"type": "string", "nullable": True},
    "bool": {"type": "boolean", "nullable": True},
}


def _add_services(
    doc: dict[str, Any],
    services: Sequence[ServicePlan],
    *,
    max_batch: int,
    errors: Mapping[str, Any],
) -> None:
    """``GET /v1/services`` and one ``POST /v1/services/<name>`` per service."""
    doc["paths"]["/v1/services"] = {
        "get": {
            "operationId": "listServices",
            "summary": "The registered feature services (as `freshet views --services --json`)",
            "responses": {
                "200": _json_response("Services", {"type": "array", "items": {"type": "object"}}),
                **{k: v for k, v in errors.items() if k == "401"},
            },
        }
    }
    value = {
        "nullable": True,
        "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "array"}],
    }
    for plan in services:
        properties: dict[str, Any] = {}
        for view in plan.views:
            for key, key_type in zip(
                view.layout.keys, view.layout.key_types or ("string",), strict=False
            ):
                properties.setdefault(key, _key_schema(key_type))
        for name, kind in plan.request:
            properties[name] = _REQUEST_SCHEMAS[kind]
        names = list(plan.columns)
        view_info = {
            "type": "object",
            "required": ["version", "entity", "found", "as_of", "age_ms"],
            "properties": {
                "version": {"type": "integer"},
                "entity": {"type": "string"},
                "found": {"type": "boolean"},
                "as_of": {"type": "integer", "nullable": True},
                "age_ms": {"type": "integer", "nullable": True},
            },
        }
        result = {
            "type": "object",
            "required": ["features", "status", "views"],
            "properties": {
                "features": {
                    "type": "object",
                    "required": names,
                    "properties": dict.fromkeys(names, value),
                    "additionalProperties": False,
                },
                "status": {
                    "type": "object",
                    "required": names,
                    "additionalProperties": {
                        "type": "string",
                        "enum": _STATUSES,
                    },
                },
                "views": {
                    "type": "object",
                    "required": [v.name for v in plan.views],
                    "properties": {v.name: view_info for v in plan.views},
                    "additionalProperties": False,
                },
            },
        }
        doc["paths"][f"/v1/services/{plan.name}"] = {
            "post": {
                "operationId": f"getService_{plan.name}",
                "summary": (
                    f"Feature service {plan.name}: {', '.join(names)} for up to {max_batch} "
                    "rows, in request order"
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["rows"],
                                "additionalProperties": False,
                                "properties": {
                                    "rows": {
                                        "type": "array",
                                        "maxItems": max_batch,
                                        "items": {
                                            "type": "object",
                                            "required": list(properties),
                                            "properties": properties,
                                            "additionalProperties": False,
                                        },
                                    },
                                    "max_staleness_ms": _MAX_STALENESS,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json_response(
                        "One result per row, in request order",
                        {
                            "type": "object",
                            "required": ["service", "results"],
                            "properties": {
                                "service": {"type": "string", "enum": [plan.name]},
                                "results": {"type": "array", "items": result},
                            },
                        },
                    ),
                    "400": _error_response("The body is not JSON"),
                    "413": _error_response(f"More than {max_batch} rows, or body > 1 MiB"),
                    **{k: v for k, v in errors.items() if k != "404"},
                },
            }
        }


def _add_ingest(doc: dict[str, Any], view_names: Sequence[str], *, auth: bool) -> None:
    """``POST /v1/ingest/{view}`` (:mod:`freshet.serving.ingest`)."""
    answer = {
        "type": "object",
        "required": ["view", "produced", "served", "pending_count", "pending", "waited_ms"],
        "properties": {
            "view": {"type": "string"},
            "produced": {"type": "integer"},
            "served": {"type": "boolean"},
            "pending_count": {"type": "integer"},
            "pending": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "properties": {
                        "entity": {"type": "string"},
                        "event_time": {"type": "integer"},
                        "as_of": {"type": "integer", "nullable": True},
                    },
                },
            },
            "waited_ms": {"type": "integer"},
        },
    }
    errors = {
        "400": _error_response("The body is not JSON"),
        "401": _error_response("Missing or invalid API key"),
        "403": _error_response("The API key has no write scope on this view (VIEW=w)"),
        "404": _error_response("Unknown view; the message names the known views"),
        "413": _error_response("More than 10,000 events, or body > 1 MiB"),
        "422": _error_response(
            "Invalid events, named by index, field and reason; nothing was produced"
        ),
        "503": _error_response("Kafka did not acknowledge the events in time", _RETRY_AFTER),
    }
    if not auth:
        del errors["401"], errors["403"]
    doc["paths"]["/v1/ingest/{view}"] = {
        "post": {
            "operationId": "ingestEvents",
            "summary": "Produce events to the view's topic; with wait_ms, read them back",
            "description": (
                "Events are validated against the view's schema (all of them before any is "
                "produced), produced keyed by entity with an idempotent producer, and with "
                "`wait_ms` the answer is 200 once every event's entity is served as of that "
                "event, else 202 with what is still pending."
            ),
            "parameters": [
                {
                    "name": "view",
                    "in": "path",
                    "required": True,
                    "description": f"Feature view name: {', '.join(view_names)}",
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["events"],
                            "additionalProperties": False,
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 10_000,
                                    "items": {"type": "object"},
                                },
                                "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60_000},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json_response("Produced, and every event is served", answer),
                "202": _json_response("Produced; not (yet) served as of every event", answer),
                **errors,
            },
        }
    }


def _key_schema(key_type: str) -> dict[str, Any]:
    if key_type == "int64":
        return {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}
    return {"type": "string", "maxLength": MAX_ENTITY_LENGTH, "pattern": ENTITY_JSON_PATTERN}


def _add_composite_view(
    doc: dict[str, Any], layout: ViewLayout, *, max_batch: int, errors: Mapping[str, Any]
) -> None:
    """The paths and schemas of a view keyed by several fields."""
    name = layout.name
    keys = layout.keys
    types = [
        layout.key_types[i] if i < len(layout.key_types) else "string" for i in range(len(keys))
    ]
    shape = f"keyed by {', '.join(keys)}"
    key_schema = f"Key_{name}"
    doc["components"]["schemas"][key_schema] = {
        "type": "object",
        "description": (
            f"An entity of {name!r} ({shape}); a long field also takes a string of decimal digits"
        ),
        "required": list(keys),
        "additionalProperties": False,
        "properties": {k: _key_schema(t) for k, t in zip(keys, types, strict=True)},
    }
    lookup = {"$ref": "#/components/schemas/Lookup"}
    not_found = _error_response(
        f"Unknown view, or a path without one segment per key field ({', '.join(keys)})"
    )
    doc["paths"]["/v1/features/" + name + "/" + "/".join("{" + k + "}" for k in keys)] = {
        "get": {
            "operationId": f"getFeatures_{name}",
            "summary": f"Features of one entity of {name} ({shape}; one segment each, in order)",
            "parameters": [
                {
                    "name": k,
                    "in": "path",
                    "required": True,
                    "description": f"Key field {k!r}, percent-encoded",
                    "schema": _key_schema(t),
                }
                for k, t in zip(keys, types, strict=True)
            ]
            + [_features_param(layout.feature_names), _MAX_STALENESS_PARAM],
            "responses": {
                "200": _json_response("The entity's features, with its key", lookup),
                **errors,
                "404": not_found,
            },
        }
    }
    doc["components"]["schemas"][f"BatchRequest_{name}"] = {
        "type": "object",
        "required": ["entities"],
        "additionalProperties": False,
        "properties": {
            "entities": {
                "type": "array",
                "maxItems": max_batch,
                "description": (
                    "Objects of key fields; an encoded id (values joined by '|', each with "
                    "'%' as '%25' and '|' as '%7C') is also accepted"
                ),
                "items": {"$ref": f"#/components/schemas/{key_schema}"},
            },
            "features": {
                "type": "array",
                "nullable": True,
                "minItems": 1,
                "items": {"type": "string", "enum": list(layout.feature_names)},
            },
            "max_staleness_ms": _MAX_STALENESS,
        },
    }
    doc["paths"][f"/v1/features/{name}"] = {
        "post": {
            "operationId": f"getFeaturesBatch_{name}",
            "summary": f"Features of up to {max_batch} entities of {name} ({shape})",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/BatchRequest_{name}"}
                    }
                },
            },
            "responses": {
                "200": _json_response(
                    "One lookup per requested entity, in request order, each with its key",
                    {"$ref": "#/components/schemas/BatchResponse"},
                ),
                "400": _error_response("The body is not JSON"),
                "413": _error_response(f"More than {max_batch} entities, or body > 1 MiB"),
                **errors,
            },
        }
    }


def _features_param(feature_names: Sequence[str]) -> dict[str, Any]:
    return {
        "name": "features",
        "in": "query",
        "required": False,
        "description": "Comma-separated subset of the view's features",
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": list(feature_names)},
        },
    }


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _status_response(status: str) -> dict[str, Any]:
    return {
        "description": status,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": [status]}},
                }
            }
        },
    }


def _schemas(max_batch: int, feature_names: Sequence[str]) -> dict[str, Any]:
    value = {"nullable": True, "anyOf": [{"type": "number"}, {"type": "string"}]}
    return {
        "Lookup": {
            "type": "object",
            "required": [
                "view",
                "entity",
                "found",
                "as_of",
                "valid_until",
                "age_ms",
                "features",
                "status",
            ],
            "properties": {
                "view": {"type": "string"},
                "entity": {"type": "string"},
                "found": {"type": "boolean"},
                "as_of": {
                    "type": "integer",
                    "nullable": True,
                    "description": "Event time (epoch ms) the values are as of",
                },
                "valid_until": {
                    "type": "integer",
                    "nullable": True,
                    "description": (
                        "When the windowed values next change without new events (epoch ms; "
                        "null: never). Past it by more than the view's allowed lateness plus "
                        "FRESHET_STALE_GRACE_MS, windowed values are reported stale"
                    ),
                },
                "age_ms": {
                    "type": "integer",
                    "nullable": True,
                    "description": "Now minus as_of, in ms",
                },
                "features": {
                    "type": "object",
                    "description": (
                        "Value per feature; null when not found or expired, or stale past "
                        "max_staleness_ms"
                    ),
                    "additionalProperties": value,
                },
                "status": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "string",
                        "enum": _STATUSES,
                    },
                },
                "key": {
                    "type": "object",
                    "description": (
                        "Views keyed by several fields only: the key fields and values (long "
                        "fields as integers); entity is then their encoding, e.g. c1|m2"
                    ),
                    "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["entities"],
            "additionalProperties": False,
            "properties": {
                "entities": {
                    "type": "array",
                    "maxItems": max_batch,
                    "items": {
                        "type": "string",
                        "maxLength": MAX_ENTITY_LENGTH,
                        "pattern": ENTITY_JSON_PATTERN,
                    },
                },
                "features": {
                    "type": "array",
                    "nullable": True,
                    "minItems": 1,
                    "items": {"type": "string", "enum": list(feature_names)},
                },
                "max_staleness_ms": _MAX_STALENESS,
            },
        },
        "BatchResponse": {
            "type": "object",
            "required": ["view", "results"],
            "properties": {
                "view": {"type": "string"},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/Lookup"}},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
    }
