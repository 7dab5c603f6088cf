"""The OpenAPI document (/api/openapi.json), made to say exactly what the server accepts.

FastAPI generates it from the routes and models; this fills in what it cannot say by itself:
query and header parameters are never null (they are present or absent), refusals are 400 with the
error body (never FastAPI's 422), the signed provider events are documented, only the configured
payment providers are offered, and the links that take a client from a created thing to reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from ..config import get_settings
from .errors import ErrorBody

LINKS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    # (path, method, status) -> link name -> (target path, target method), and the link's fields
    ("/api/credits/usage", "post", "200"): {
        "GetSession": {
            "target": ("/api/credits/sessions/{session_id}", "get"),
            "parameters": {"session_id": "$response.body#/session_id"},
            "description": "The billing session the usage was reported with (when `session_id` is not null).",
        },
    },
    ("/api/credits/holds", "post", "201"): {
        "CaptureHold": {
            "target": ("/api/credits/holds/{hold_id}/capture", "post"),
            "parameters": {"hold_id": "$response.body#/id"},
            "requestBody": {"quantity": "$response.body#/estimated_quantity"},
            "description": "The operation completed as estimated: charge it and release the hold.",
        },
        "ReleaseHold": {
            "target": ("/api/credits/holds/{hold_id}/release", "post"),
            "parameters": {"hold_id": "$response.body#/id"},
            "description": "The operation failed: release the hold.",
        },
    },
    ("/api/keys", "post", "201"): {
        "RevokeKey": {
            "target": ("/api/keys/{key_id}", "delete"),
            "parameters": {"key_id": "$response.body#/id"},
            "description": "Revoke the key just made.",
        },
    },
    ("/api/credits/payment-methods", "get", "200"): {
        "ChargeCard": {
            "target": ("/api/credits/quick-purchase", "post"),
            "requestBody": {"package_id": "pkg_50", "payment_method_id": "$response.body#/0/id"},
            "description": "Buy the $50 package with the first saved card.",
        },
        "RemoveCard": {
            "target": ("/api/credits/payment-methods", "delete"),
            "parameters": {"payment_method_id": "$response.body#/0/id"},
            "description": "Remove the first saved card.",
        },
    },
}


def install(app: FastAPI, extra_models: tuple[type, ...] = ()) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not done or done[0] is not schema:  # FastAPI regenerates when routes change
            exact(schema, extra_models)
            done[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    options = schema.get("anyOf")
    if not options or not any(o.get("type") == "null" for o in options):
        return schema
    rest = [o for o in options if o.get("type") != "null"]
    out = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(rest) == 1:
        out.update(rest[0])
    else:
        out["anyOf"] = rest
    return out


def exact(schema: dict[str, Any], extra_models: tuple[type, ...] = ()) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in extra_models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[attr-defined]
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    error = {"description": "invalid_request", "content": {"application/json": {"schema": ref(ErrorBody.__name__)}}}
    operation_ids = {}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            operation_ids[(path, method)] = op.get("operationId")
            for parameter in op.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None or op.get("parameters") or "requestBody" in op:
                responses.setdefault("400", error)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _providers(components)
    for (path, method, status), links in LINKS.items():
        response = schema["paths"][path][method]["responses"][status]
        response["links"] = {
            name: {"operationId": operation_ids[link["target"]], **{k: v for k, v in link.items() if k != "target"}}
            for name, link in links.items()
        }


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _providers(components: dict[str, Any]) -> None:
    """Only the providers this deployment offers (PAYMENT_PROVIDERS)."""
    request = components.get("CheckoutRequest")
    if not request:
        return
    offered = list(get_settings().payment_providers)
    provider = request["properties"]["provider"]
    provider["enum"] = offered
    if provider.get("default") not in offered:
        provider.pop("default", None)
        request.setdefault("required", []).append("provider")
