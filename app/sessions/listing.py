"""GET /api/sessions: the listing document, and ListingFastPath, which answers it before Flask dispatches.

The page comes from app/runner/reads.py as plain dicts: the ORM and a marshmallow dump would cost
several times the indexed read itself (the schemas still describe the response in the OpenAPI
document). ListingFastPath answers the requests whose arguments SessionListArgsSchema accepts, as
the status poll is answered; anything else (a bad argument, another method) goes to the Flask
view, which loads the same schema and answers with the same document or the error.
"""
import json
from typing import Optional
from urllib.parse import parse_qsl

import marshmallow as ma
import werkzeug.urls  # noqa: F401 -- registers the "werkzeug.url_quote" decoding error handler used below

from app.accounts.auth import Caller, caller_from_environ
from app.accounts.users import Users
from app.runner.reads import Reads
from app.schemas import encode_cursor


def listing_document(reads: Reads, caller: Caller, limit: int, status: Optional[str] = None,
                     cursor=None, owner: Optional[str] = None) -> dict:
    """The page `caller` asked for: their own sessions, or (admins, the open service) anyone's or `owner`'s.

    `cursor`: the position SessionListArgsSchema loaded from ?cursor= (None: the first page).
    """
    page = reads.page(limit, status, cursor, owner, scope=caller.scope)
    return {"total_sessions": page.total, "sessions": page.sessions,
            "next_cursor": encode_cursor(*page.next_after) if page.next_after else None}


class QueryArguments:
    """A query string loaded as the view's schema loads it, for far less than a schema.load.

    As flask-smorest (webargs) does for a query: the first value of each field's key, other keys
    ignored. Each value goes through its field's own conversion and validators, so exactly what the
    schema accepts is accepted; a schema that loads in other ways (hooks, required or default
    values, repeated keys) is refused here rather than loaded differently.
    """

    def __init__(self, schema: ma.Schema):
        hooks = [tag for tag, names in schema._hooks.items() if names]
        if hooks:
            raise ValueError(f"{type(schema).__name__} has {hooks} hooks, which QueryArguments does not run")
        self.fields = {}  # key in the query -> (loaded name, conversion, validators)
        for name, field in schema.load_fields.items():
            if (field.required or field.load_default is not ma.missing or field.pre_load or field.post_load
                    or isinstance(field, (ma.fields.List, ma.fields.Tuple))):
                raise ValueError(f"{type(schema).__name__}.{name} does not load as QueryArguments loads fields")
            self.fields[field.data_key or name] = (name, field._deserialize, [_checked(v) for v in field.validators])

    def load(self, query_string: str) -> Optional[dict]:
        """{field name: loaded value} of the arguments given; None if the schema refuses any of them."""
        try:
            # Decoded as Flask's request.args decodes it (invalid UTF-8 stays percent-encoded).
            pairs = parse_qsl(query_string.encode("latin-1").decode(), keep_blank_values=True,
                              errors="werkzeug.url_quote")
        except UnicodeError:
            return None
        loaded = {}
        for key, raw in pairs:
            spec = self.fields.get(key)
            if spec is None or spec[0] in loaded:
                continue
            name, convert, validators = spec
            try:
                value = convert(raw, key, None)
                for validate in validators:
                    validate(value)
            except ma.ValidationError:
                return None
            loaded[name] = value
        return loaded


def _checked(validator):
    """A field validator as the field calls it: a plain function may also refuse by returning False."""
    if isinstance(validator, ma.validate.Validator):
        return validator

    def check(value):
        if validator(value) is False:
            raise ma.ValidationError("Invalid value.")
    return check


class ListingFastPath:
    """WSGI middleware: answers GET /api/sessions with arguments the schema accepts; everything else goes to Flask."""

    def __init__(self, wsgi_app, reads: Reads, users: Users, args_schema: ma.Schema, default_limit: int):
        self.wsgi_app = wsgi_app
        self.reads, self.users = reads, users
        self.arguments = QueryArguments(args_schema)
        self.default_limit = default_limit

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/api/sessions" and environ.get("REQUEST_METHOD") == "GET":
            args = self.arguments.load(environ.get("QUERY_STRING", ""))
            caller = caller_from_environ(self.users, environ) if args is not None else None
            if caller is not None:
                document = listing_document(self.reads, caller, args.get("limit", self.default_limit),
                                            args.get("status"), args.get("cursor"), args.get("owner"))
                body = json.dumps(document).encode()
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
        return self.wsgi_app(environ, start_response)
