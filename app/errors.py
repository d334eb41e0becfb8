"""One JSON error shape for the whole API: {"detail": "...", "errors": {...}}.

flask-smorest routes every HTTPException here (see extensions.Api); pages outside /api keep
Werkzeug's HTML errors. Validation errors from webargs arrive as 422 with their messages
keyed by location ("json", "query"), which we flatten: a client cares about the field.
"""
import logging

import marshmallow as ma
from flask import jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

DETAILS = {
    400: "The request could not be understood.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request body is too large.",
    415: "Send the request body as JSON (Content-Type: application/json).",
    422: "The request is invalid.",
    500: "Internal server error.",
}


class ErrorSchema(ma.Schema):
    """Shape of every error response (for the OpenAPI document)."""

    detail = ma.fields.String(metadata={"description": "What went wrong, for a person"})
    errors = ma.fields.Dict(metadata={"description": "Messages by field, when input was invalid"})


def json_error_response(error: HTTPException):
    if not request.path.startswith("/api"):
        return error
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages") or {}
    if set(errors) <= {"json", "query", "view_args", "form", "headers"} and len(errors) == 1:
        errors = next(iter(errors.values()))
    if isinstance(errors, list):  # messages about the body as a whole ("Invalid JSON body.")
        errors = {"body": errors}
    if "_schema" in errors:
        errors = {"body" if k == "_schema" else k: v for k, v in errors.items()}
    detail = data.get("message") or _detail_for(error, errors)
    body = {"detail": detail}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = error.code or 500
    for name, value in (data.get("headers") or {}).items():
        response.headers[name] = value
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _detail_for(error: HTTPException, errors) -> str:
    if error.code == 422 and errors:
        return f"Invalid input: {', '.join(sorted(_flatten_fields(errors)))}."
    if list(errors) == ["body"]:
        return " ".join(str(m) for m in errors["body"])
    if error.description and error.description != type(error).description:
        return error.description  # a specific message from where it was raised
    return DETAILS.get(error.code, error.name)


def _flatten_fields(errors, prefix=""):
    for key, value in errors.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            yield from _flatten_fields(value, name + ".")
        else:
            yield name


def handle_unexpected(error: Exception):
    """Anything that escaped a view: log it, answer with the same JSON shape."""
    if isinstance(error, HTTPException):
        return json_error_response(error)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_error_response(InternalServerError())
