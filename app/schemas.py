"""marshmallow schemas: what requests must look like, and the shapes responses take.

The same schemas validate requests and generate the OpenAPI document (flask-smorest), so the
published contract cannot drift from the code. Unknown fields of a body are rejected (marshmallow's
RAISE); unknown query arguments are ignored (webargs' default). Also here: the listing cursor's format.
"""
import re
from datetime import datetime, timedelta, timezone

import marshmallow as ma
from marshmallow import fields, validate

from app.models import NAME_PATTERN, STATUSES

COMPLEXITIES = ("simple", "moderate", "complex")
# A NUL cannot be stored as text by every database; saying so in the schema tells clients too.
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="Text cannot hold a NUL character.")
# http(s) with a host name or IPv4 address, an optional port and no user:password@, in the
# characters RFC 3986 allows (anything else is percent-encoded, as browsers copy it), so every URL
# admitted here is one urllib can split; the fetch step vets the address itself (web.py).
_HOST_CHARS = r"-A-Za-z0-9._~%!$&'()*+,;="
_PORT = r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
_PATH_CHARS = _HOST_CHARS + r":@/?#\[\]"
HTTP_URL = validate.Regexp(rf"^[Hh][Tt][Tt][Pp][Ss]?://[{_HOST_CHARS}]+{_PORT}([/?#][{_PATH_CHARS}]*)?$",
                           error="Not an http(s) URL (percent-encode spaces and other characters).")
LIMITS = {"topic": 200, "user_request": 5000, "page_count": (1, 200), "source_count": (1, 50), "urls": 10,
          "url_length": 2000, "page_size": (1, 500)}


class WholeNumber(fields.Integer):
    """A JSON integer: 20 or 20.0 (JSON Schema counts both as integers), never "20", 20.5 or true."""

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            raise self.make_error("invalid", input=value)
        return int(value)


class RequirementsSchema(ma.Schema):
    topic = fields.String(required=True, validate=[validate.Length(1, LIMITS["topic"]), NO_NUL],
                          metadata={"example": "Electric Vehicle Market Analysis"})
    page_count = WholeNumber(required=True, validate=validate.Range(*LIMITS["page_count"]),
                             metadata={"example": 20})
    source_count = WholeNumber(required=True, validate=validate.Range(*LIMITS["source_count"]),
                               metadata={"example": 10})
    complexity = fields.String(load_default="moderate", validate=validate.OneOf(COMPLEXITIES),
                               metadata={"example": "moderate"})
    urls = fields.List(
        fields.String(validate=[validate.Length(max=LIMITS["url_length"]), HTTP_URL]),
        validate=validate.Length(max=LIMITS["urls"]),
        metadata={"description": "web pages to use as sources (fetched by the server; private addresses refused)"})
    data_urls = fields.List(
        fields.String(validate=[validate.Length(max=LIMITS["url_length"]), HTTP_URL]),
        validate=validate.Length(max=LIMITS["urls"]),
        metadata={"description": "CSV or JSON tables to analyse (first column: x, e.g. year; then numeric series)"})

    @ma.pre_load
    def strip_topic(self, data, **kwargs):
        if isinstance(data, dict) and isinstance(data.get("topic"), str):
            data = dict(data, topic=data["topic"].strip())
        return data


class SubmitRequestSchema(ma.Schema):
    user_request = fields.String(required=True, validate=[validate.Length(1, LIMITS["user_request"]), NO_NUL],
                                 metadata={"example": "A market analysis of electric vehicles for investors"})
    requirements = fields.Nested(RequirementsSchema, required=True)


class SubmitResponseSchema(ma.Schema):
    session_id = fields.String()
    status = fields.String()
    status_url = fields.String()


class StatusSchema(ma.Schema):
    """The session status document (stored pre-rendered by Store.render; this schema documents it).

    Steps may add fields of their own (the default pipeline's writer and reviewer add `writer`
    and `review`); a custom pipeline's steps may add others, so the document is open to them.
    """

    class Meta:
        unknown = ma.INCLUDE  # documented as additionalProperties: a step's own fields

    session_id = fields.String()
    status = fields.String(metadata={"enum": list(STATUSES)})
    user_request = fields.String()
    # As stored: sessions submitted under older rules, or imported from the JSON store, keep theirs.
    report_requirements = fields.Dict(metadata={"description": "the requirements as submitted (see Requirements)"})
    current_agent = fields.String(allow_none=True)
    message = fields.String(allow_none=True, metadata={"description": "the running step's latest progress message"})
    completed_tasks = fields.List(fields.String(), metadata={"description": "finished steps, in pipeline order"})
    progress = fields.Float(metadata={"description": "0..1"})
    pipeline = fields.List(fields.String())
    started_at = fields.String(metadata={"format": "date-time"})
    updated_at = fields.String(metadata={"format": "date-time"})
    finished_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    error = fields.String(allow_none=True)
    failed_step = fields.String(allow_none=True)
    cancel_requested = fields.Boolean()
    attempts = fields.Integer(metadata={"description": "resumes after the process running it was lost"})
    report_url = fields.String(allow_none=True)
    writer = fields.Dict(metadata={"description": "added by the writer step: how the report was written"})
    review = fields.Dict(allow_none=True, metadata={"description": "added by the reviewer step: its findings"})


# "<created_at in microseconds since 1970>.<session id>": every string the pattern admits is a
# valid position (the keyset comparison needs no existing row), so the OpenAPI document can say
# exactly which cursors are accepted. Sixteen digits reach the year 2286.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[!-~]{1,64}$"
_CURSOR_FORMAT = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_cursor(created_at: datetime, session_id: str) -> str:
    return f"{(created_at - _EPOCH) // timedelta(microseconds=1)}.{session_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last session of the previous page; ValueError if it is not a cursor."""
    if not _CURSOR_FORMAT.fullmatch(cursor):
        raise ValueError("not a cursor")
    micros, _, session_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), session_id


class Cursor(fields.String):
    """A listing position as encode_cursor writes it; loads as (created_at, id), and "" as None (the first page)."""

    default_error_messages = {"cursor": "Invalid cursor."}

    def __init__(self, **kwargs):
        # The pattern, for the OpenAPI document; loading checks it whole (a Regexp validator's `$`
        # would also pass a trailing newline, which decode_cursor refuses).
        metadata = {"pattern": f"{CURSOR_PATTERN}|^$"} | kwargs.pop("metadata", {})
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text:
            return None
        try:
            return decode_cursor(text)
        except ValueError:
            raise self.make_error("cursor") from None


class SessionListArgsSchema(ma.Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(validate=validate.Range(*LIMITS["page_size"]),
                           metadata={"description": "page size (default 50)"})
    cursor = Cursor(metadata={"description": "next_cursor of the previous page (empty: the first page)"})
    owner = fields.String(validate=validate.Regexp(f"{NAME_PATTERN}|^$", error="Not a user name."),
                          metadata={"description": "admins: only this user's sessions (empty: those no one owns); "
                                                   "anyone else sees only their own"})


class SessionSummarySchema(ma.Schema):
    """A session as listed (Reads.page builds these; the listing is never dumped through this schema)."""

    session_id = fields.String()
    status = fields.String()
    topic = fields.String()
    owner = fields.String(allow_none=True, metadata={"description": "who submitted it; null: no one (made "
                                                                    "before accounts, or while the service was open)"})
    current_agent = fields.String(allow_none=True)
    started_at = fields.String(metadata={"format": "date-time"})
    updated_at = fields.String(metadata={"format": "date-time"})


class SessionListSchema(ma.Schema):
    total_sessions = fields.Integer(metadata={"description": "sessions matching the filter"})
    sessions = fields.List(fields.Nested(SessionSummarySchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "pass as ?cursor= for the next page"})


class ChartSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE  # the analyst's own description of the chart

    png = fields.String(metadata={"description": "file name of the PNG"})
    svg = fields.String(metadata={"description": "file name of the SVG"})
    url = fields.String(metadata={"description": "GET this for the PNG"})
    svg_url = fields.String(metadata={"description": "GET this for the SVG"})


class ReportSchema(ma.Schema):
    """The finished report: the output of the pipeline's last step (the publisher), with the session id."""

    class Meta:
        unknown = ma.INCLUDE  # a custom pipeline's last step returns keys of its own

    session_id = fields.String()
    title = fields.String()
    markdown = fields.String(metadata={"description": "the report as Markdown, the same text as the .md file"})
    word_count = fields.Integer()
    sections = fields.List(fields.Raw(), metadata={"description": "the sections written, in order"})
    sources = fields.List(fields.Dict(), metadata={"description": "numbered as cited: [n] is sources[n-1]"})
    tables = fields.List(fields.Dict(), metadata={"description": "the analyst's data tables"})
    charts = fields.List(fields.Nested(ChartSchema))
    review = fields.Dict(allow_none=True, metadata={"description": "the reviewer's findings"})
    files = fields.Dict(metadata={"description": "file names by kind (md, html, pdf)"})
    downloads = fields.Dict(metadata={"description": "download URLs by kind (md, html, pdf)"})
    report = fields.Raw(metadata={"description": "a custom pipeline's last output, when it is not an object"})
