"""The OpenAPI 3.1 document of the API (served at /openapi.json, rendered at /docs)."""

from __future__ import annotations

from typing import Any

from fraud_platform.lib.schema import CHANNELS, CURRENCIES, MAX_AMOUNT, MAX_ID_LENGTH

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
TRANSACTION: dict[str, Any] = {
    "type": "object",
    "description": "One card transaction in the bus's event schema (validated exactly as the stream does).",
    "required": ["transaction_id", "card_id", "merchant_id", "amount", "currency", "timestamp"],
    "properties": {
        "transaction_id": _ID,
        "card_id": _ID,
        "merchant_id": _ID,
        "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT},
        "currency": {"type": "string", "enum": sorted(CURRENCIES)},
        "timestamp": {
            "oneOf": [
                {"type": "integer", "description": "epoch milliseconds"},
                {"type": "string", "description": "ISO-8601 with a time zone"},
            ]
        },
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "channel": {"type": "string", "enum": sorted(CHANNELS)},
        "mcc": {"type": "string", "pattern": "^[0-9]{4}$"},
    },
}
DECISION: dict[str, Any] = {
    "type": "object",
    "required": [
        "transaction_id",
        "decision",
        "score",
        "reasons",
        "model_version",
        "feature_definition_version",
        "decided_at",
        "stand_in",
    ],
    "properties": {
        "transaction_id": {"type": "string"},
        "decision": {"type": "string", "enum": ["approve", "review", "decline"]},
        "score": {"type": ["number", "null"], "description": "null for a stand-in"},
        "reasons": {
            "type": "array",
            "description": "Reviewed and declined transactions: the features that pushed the score up most.",
            "items": {
                "type": "object",
                "properties": {
                    "feature": {"type": "string"},
                    "value": {"type": ["number", "null"], "description": "the served value; null: missing"},
                    "contribution": {"type": ["number", "null"], "description": "log-odds contribution"},
                },
            },
        },
        "model_version": {"type": ["string", "null"]},
        "feature_definition_version": {"type": "string"},
        "decided_at": {"type": "string", "format": "date-time"},
        "stand_in": {
            "type": "boolean",
            "description": "true: not the model's decision (see stand_in_reason)",
        },
        "stand_in_reason": {"type": "string"},
    },
}
_INVALID = {
    "description": "The body breaks the event schema: the field and the reason.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "detail": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                        },
                    }
                },
            }
        }
    },
}
_REUSED = {
    **_INVALID,
    "description": "A transaction_id that was first seen with other content (card, merchant, amount,"
    " currency, time, place, channel or mcc): the field and the reason. An identical re-send gets the first"
    " decision.",
}
_UNAUTHORISED = {"description": "An API key is configured and the request has none or a wrong one."}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _probe(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "yes"}, "503": {"description": "no"}},
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "fraud-platform authorization API",
        "version": "1",
        "description": "Synchronous fraud decisions from the running scoring flow (docs/api.md).",
    },
    "components": {
        "schemas": {"Transaction": TRANSACTION, "Decision": DECISION},
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    },
    "security": [{"bearer": []}, {"apiKey": []}, {}],
    "paths": {
        "/v1/authorize": {
            "post": {
                "summary": "Decide one transaction (idempotent by transaction_id)",
                "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/Transaction"})},
                "responses": {
                    "200": {
                        "description": "The decision",
                        **_json({"$ref": "#/components/schemas/Decision"}),
                    },
                    "401": _UNAUTHORISED,
                    "409": _REUSED,
                    "422": _INVALID,
                },
            }
        },
        "/v1/authorize/batch": {
            "post": {
                "summary": "Decide up to 1,000 transactions (all validated first: one bad item refuses the batch)",
                "requestBody": {
                    "required": True,
                    **_json({"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}}),
                },
                "responses": {
                    "200": {
                        "description": "The decisions in request order",
                        **_json(
                            {
                                "type": "object",
                                "properties": {
                                    "results": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Decision"},
                                    }
                                },
                            }
                        ),
                    },
                    "401": _UNAUTHORISED,
                    "409": {
                        **_REUSED,
                        "description": _REUSED["description"]
                        + " The batch's other transactions were decided;"
                        " sent again without the refused ones, they get their first decisions.",
                    },
                    "422": _INVALID,
                },
            }
        },
        "/healthz": _probe("The process is up"),
        "/readyz": _probe("Redis reachable, the scoring flow reporting, a model served"),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
}

SWAGGER_PAGE = """<!doctype html>
<html><head><title>fraud-platform authorization API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"><p>The OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>
"""
