"""The OpenAPI 3.0 document served at ``/openapi.json``, written by hand from the views.

Hand-written (not generated from handlers) because the app is a plain ASGI callable; the
schemas are the real ones: ``tests/integration/test_serving_schemathesis.py`` drives the
running endpoint from this document and validates every response against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}


def build_openapi(
    layouts: Mapping[str, ViewLayout], *, max_batch: int, auth: bool, version: str
) -> dict[str, Any]:
    """The document for these views; ``auth`` adds the API-key security requirement."""
    view_names = sorted(layouts)
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
        "description": f"Feature view name: {', '.join(view_names)}",
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
                        {
                            "name": "features",
                            "in": "query",
                            "required": False,
                            "description": "Comma-separated subset of the view's features",
                            "style": "form",
                            "explode": False,
                            "schema": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "enum": feature_names},
                            },
                        },
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
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


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
            "required": ["view", "entity", "found", "as_of", "age_ms", "features", "status"],
            "properties": {
                "view": {"type": "string"},
                "entity": {"type": "string"},
                "found": {"type": "boolean"},
                "as_of": {
                    "type": "integer",
                    "nullable": True,
                    "description": "Event time (epoch ms) the values are as of",
                },
                "age_ms": {
                    "type": "integer",
                    "nullable": True,
                    "description": "Now minus as_of, in ms",
                },
                "features": {
                    "type": "object",
                    "description": "Value per feature; null when not found or expired",
                    "additionalProperties": value,
                },
                "status": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "string",
                        "enum": ["present", "not_found", "expired"],
                    },
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
