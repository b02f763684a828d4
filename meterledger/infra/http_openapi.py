"""The OpenAPI 3.1 document of a route table (meterledger.infra.http serves it at
GET /openapi.json).

Every operation states its tier: `x-tier` ("public", "auditor" or "operator"), `security`
([] when public, else the bearer schemes whose tokens pass) and, above public, its 401 and
403 answers; `components.securitySchemes` has one bearer scheme per tier above public.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import starlette.routing

from meterledger.infra import http_auth as A

if TYPE_CHECKING:
    from meterledger.infra.http import Route

JSON = "application/json"
_NON_WORD = re.compile(r"[^0-9A-Za-z]+")
_ERROR = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document(routes: Sequence[Route], title: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        if not r.api:
            continue
        _, template, convertors = starlette.routing.compile_path(r.path)
        summary, description = r.describe()
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in convertors]
        params += [{"name": q.name, "in": "query", "required": q.required,
                    "schema": {"type": "string"},
                    **({"description": q.description} if q.description else {})}
                   for q in r.query]
        tier = r.tier if r.tier is not None else A.PUBLIC
        for m in r.methods:
            responses: dict[str, Any] = {
                "200": {"description": "success", "content": {r.content_type: {}}}}
            if tier is not A.PUBLIC:
                responses["401"] = {"description": "no token, or one this API does not know",
                                    **_ERROR}
                responses["403"] = {"description": "the token of a lower tier", **_ERROR}
            responses["default"] = {"description": "an error, in the API's envelope", **_ERROR}
            op: dict[str, Any] = {
                "summary": summary,
                # unique, as method and path are
                "operationId": m.lower() + "_" + _NON_WORD.sub("_", template).strip("_"),
                "x-tier": tier.label,
                "security": A.operation_security(tier),
                "parameters": params,
                "responses": responses,
            }
            if description:
                op["description"] = description
            if r.body:
                op["requestBody"] = {"required": True, "content": {
                    r.body_type: {}}}
            paths.setdefault(template, {})[m.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                "additionalProperties": True}},
            "securitySchemes": A.security_schemes(),
        },
    }
