"""Reading JSON request bodies strictly: anything the standard parser would choke on, or that the
database could not store, is a 400 with a reason instead of an exception deep inside a view.

The standard library accepts a lone surrogate ("\\ud800", which no UTF-8 text can hold), NaN
and Infinity, and raises errors other than JSONDecodeError for a number over 4,300 digits
(ValueError) or deep nesting (RecursionError); webargs passes those through as 500s.
"""
import json
import math
import re

from flask_smorest import abort
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

MAX_NUMBER_DIGITS = 40  # no field takes more; a longer number is an attack on int() or float()
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidJSON(ValueError):
    """The body is not JSON this service accepts; str() says why, for the client."""


def loads(body: bytes):
    """Parse a request body as UTF-8 JSON; InvalidJSON if it is not JSON this service can store."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not UTF-8 text.") from None
    try:
        value = json.loads(text, parse_int=lambda s: _number(s, int), parse_float=lambda s: _number(s, float),
                           parse_constant=_no_constant)
    except RecursionError:
        raise InvalidJSON("The body is nested too deeply.") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"Invalid JSON body: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    _check_text(value)
    return value


def _number(text: str, convert):
    if len(text) > MAX_NUMBER_DIGITS:
        raise InvalidJSON(f"A number has more than {MAX_NUMBER_DIGITS} digits.")
    value = convert(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidJSON("A number is too large.")
    return value


def _no_constant(name: str):
    raise InvalidJSON(f"{name} is not JSON.")


def _check_text(value) -> None:
    """Every string, key or value, must be text the database can store: no NUL, no lone surrogate."""
    pending = [value]
    while pending:  # a loop, not recursion: the value may be as deep as the parser allowed
        item = pending.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate (\\ud800-\\udfff)"
                raise InvalidJSON(f"The body holds {what}, which is not text this service can store.")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


class StrictJSONParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies with loads() above."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        body = req.get_data(cache=True)
        if not body:
            return core.missing
        try:
            return loads(body)
        except InvalidJSON as exc:
            abort(400, message=str(exc), errors={"body": [str(exc)]})
