"""The OpenAPI document and Swagger UI: served from a local copy, with the schemas FastAPI does
not collect itself and every 422 documented as the `OperationOutcome` it is."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from bluebutton.fhir.bundles import FHIR_JSON

DESCRIPTION = """
Pulls a beneficiary's Medicare data (Patient, Coverage or ExplanationOfBenefit) from the CMS Blue
Button 2.0 API, every page of it, validates it as FHIR R4, and stores it in LinuxForHealth connect.

Errors are FHIR `OperationOutcome` resources whose issues say what was wrong and what to do.
"""


def serve_swagger_ui(app: FastAPI) -> None:
    """Swagger UI at /docs from a local copy: FastAPI's default loads it from a CDN, which
    leaves /docs blank offline, in air-gapped deployments, and in our own sandbox."""
    assets = resources.files("fastapi_offline") / "static"  # Swagger UI 5 (OpenAPI 3.1)
    app.mount("/static/swagger-ui", StaticFiles(directory=str(assets)), name="swagger-ui")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "syntaxHighlight": False},
        )

    app.add_api_route("/docs", docs, include_in_schema=False)


def document_models(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add schemas that responses reference by `$ref` but FastAPI does not collect itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # FastAPI caches it in app.openapi_schema; we extend that copy
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _validation_errors_are_outcomes(schema)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for model in models:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_errors_are_outcomes(schema: dict[str, Any]) -> None:
    """FastAPI documents its 422 as `application/json` `HTTPValidationError`; `web/handlers.py`
    answers every 422 as an `OperationOutcome` in `application/fhir+json`: document that."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["description"] = "FHIR OperationOutcome"
                response["content"] = {
                    FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
                }
