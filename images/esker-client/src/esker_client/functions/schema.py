"""A function's signature as pydantic models and JSON schemas, and the OpenAPI document built from them.

Runs in the worker (the only process that imports the function's code); `openapi()` is pure data and runs in
the server from the schemas a worker reported."""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any, Callable

import pydantic

_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Signature:
    """The input model (one field per keyword argument) and the output adapter of ``fn``."""

    def __init__(self, fn: Callable):
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # unresolvable forward references: fall back to "any JSON" for those
            hints = {}
        fields: dict[str, Any] = {}
        extra = "forbid"
        for p in sig.parameters.values():
            if p.kind == inspect.Parameter.VAR_KEYWORD:
                extra = "allow"  # **kwargs takes any other key
            elif p.kind in _KINDS:
                default = ... if p.default is inspect.Parameter.empty else p.default
                fields[p.name] = (hints.get(p.name, Any), default)
            # positional-only and *args cannot come from a JSON object: they keep their defaults
        self.input = pydantic.create_model(
            f"{fn.__name__}_input", __config__=pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True),
            **fields)
        ret = hints.get("return", inspect.Signature.empty)
        self.hinted_output = ret is not inspect.Signature.empty and ret is not Any
        self.output = pydantic.TypeAdapter(ret if self.hinted_output else Any,
                                           config=None if _is_model(ret) else pydantic.ConfigDict(
                                               arbitrary_types_allowed=True))

    def arguments(self, body: dict) -> dict:
        """The keyword arguments for a call; raises pydantic.ValidationError naming the field."""
        m = self.input.model_validate(body)
        args = {name: getattr(m, name) for name in type(m).model_fields}
        args.update(m.model_extra or {})
        return args

    def result(self, value: Any) -> Any:
        """The return value as plain JSON data; raises TypeError naming the type that is not JSON."""
        if isinstance(value, pydantic.BaseModel):
            data = value.model_dump(mode="json")
        elif self.hinted_output:
            try:
                data = self.output.dump_python(value, mode="json", warnings=False)
            except pydantic.PydanticSerializationError as e:
                raise TypeError(f"the result is not JSON-serializable: {e}") from None
        else:
            data = value
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"the result ({type(value).__name__}) is not JSON-serializable: {e}") from None
        return data

    def schemas(self) -> dict:
        out = self.output.json_schema() if self.hinted_output else {}
        try:
            inp = self.input.model_json_schema()
        except pydantic.PydanticInvalidForJsonSchema:  # arbitrary (non-pydantic) hinted types
            inp = {"type": "object"}
        return {"input": inp, "output": out}


def _is_model(t) -> bool:
    return isinstance(t, type) and issubclass(t, pydantic.BaseModel)


def validation_fields(err: pydantic.ValidationError) -> list[dict]:
    """pydantic's errors as `[{"loc": [...], "msg"}]` (no input values: they may be secrets)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors(include_url=False, include_input=False)]


ERROR = {"type": "object", "properties": {"error": {"type": "object", "required": ["type", "message"], "properties": {
    "type": {"type": "string"}, "message": {"type": "string"},
    "fields": {"type": "array", "items": {"type": "object", "properties": {
        "loc": {"type": "array"}, "msg": {"type": "string"}}}}}}}}


def openapi(name: str, vid: str, prefix: str, schemas: dict, version_label: str = "") -> dict:
    """OpenAPI 3.1 for one version: the synchronous call and the async submit, with the shared error shape.
    ``schemas`` is what the worker reported ({"input", "output"}); ``prefix`` the server's URL prefix."""
    inp = schemas.get("input") or {"type": "object"}
    defs = dict(inp.pop("$defs", {}) if isinstance(inp, dict) else {})
    out = dict(schemas.get("output") or {})
    defs.update(out.pop("$defs", {}))

    def refs(s):  # pydantic writes #/$defs/X; OpenAPI keeps them under components/schemas
        return json.loads(json.dumps(s).replace('"#/$defs/', '"#/components/schemas/'))

    def errors(*codes):
        return {str(c): {"description": d, "content": {"application/json": {"schema": ERROR}}}
                for c, d in codes}

    call = {"requestBody": {"required": True, "content": {"application/json": {"schema": refs(inp)}}},
            "responses": {"200": {"description": "the return value",
                                  "content": {"application/json": {"schema": refs(out)}}},
                          **errors((401, "no or invalid token"), (403, "token without access to this function"),
                                   (404, "unknown version"), (422, "the body fails the schema"),
                                   (429, "too many waiting calls"), (500, "the function raised"),
                                   (504, "past the function's timeout"))}}
    task = {"type": "object", "properties": {"task": {"type": "string"}, "status": {"type": "string"},
                                             "url": {"type": "string"}}}
    submit = {"requestBody": call["requestBody"],
              "responses": {"202": {"description": "queued", "content": {"application/json": {"schema": task}}},
                            **errors((401, "no or invalid token"), (403, "no access"), (404, "unknown version"),
                                     (429, "too many waiting calls"))}}
    base = prefix.rstrip("/")
    return {
        "openapi": "3.1.0",
        "info": {"title": name, "version": version_label or vid, "x-esker-version": vid},
        "servers": [{"url": base}],
        "paths": {"/": {"post": {"operationId": "call", **call}},
                  f"/v/{vid}": {"post": {"operationId": "call_version", **call}},
                  "/async": {"post": {"operationId": "submit", **submit}},
                  "/tasks/{task}": {"get": {"operationId": "task", "parameters": [
                      {"name": "task", "in": "path", "required": True, "schema": {"type": "string"}}],
                      "responses": {"200": {"description": "the task's status, result or error"}}}}},
        "components": {"schemas": refs(defs),
                       "securitySchemes": {"hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                                        "description": "`token <JupyterHub API token>`"}}},
        "security": [{"hubToken": []}],
    }
