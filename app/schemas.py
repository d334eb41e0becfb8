"""marshmallow schemas: what requests must look like, and the shapes responses take.

The same schemas validate requests and generate the OpenAPI document (flask-smorest), so the
published contract cannot drift from the code. Unknown fields are rejected (marshmallow's RAISE).
"""
import marshmallow as ma
from marshmallow import fields, validate

from app.models import STATUSES, iso

COMPLEXITIES = ("simple", "moderate", "complex")
LIMITS = {"topic": 200, "user_request": 5000, "page_count": (1, 200), "source_count": (1, 50), "urls": 10,
          "url_length": 2000, "page_size": (1, 500)}


class RequirementsSchema(ma.Schema):
    topic = fields.String(required=True, validate=validate.Length(1, LIMITS["topic"]),
                          metadata={"example": "Electric Vehicle Market Analysis"})
    page_count = fields.Integer(required=True, strict=True, validate=validate.Range(*LIMITS["page_count"]),
                                metadata={"example": 20})
    source_count = fields.Integer(required=True, strict=True, validate=validate.Range(*LIMITS["source_count"]),
                                  metadata={"example": 10})
    complexity = fields.String(load_default="moderate", validate=validate.OneOf(COMPLEXITIES),
                               metadata={"example": "moderate"})
    urls = fields.List(
        fields.Url(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=LIMITS["url_length"])),
        validate=validate.Length(max=LIMITS["urls"]),
        metadata={"description": "web pages to use as sources (fetched by the server; private addresses refused)"})
    data_urls = fields.List(
        fields.Url(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=LIMITS["url_length"])),
        validate=validate.Length(max=LIMITS["urls"]),
        metadata={"description": "CSV or JSON tables to analyse (first column: x, e.g. year; then numeric series)"})

    @ma.pre_load
    def strip_topic(self, data, **kwargs):
        if isinstance(data, dict) and isinstance(data.get("topic"), str):
            data = dict(data, topic=data["topic"].strip())
        return data


class SubmitRequestSchema(ma.Schema):
    user_request = fields.String(required=True, validate=validate.Length(1, LIMITS["user_request"]),
                                 metadata={"example": "A market analysis of electric vehicles for investors"})
    requirements = fields.Nested(RequirementsSchema, required=True)


class SubmitResponseSchema(ma.Schema):
    session_id = fields.String()
    status = fields.String()
    status_url = fields.String()


class StatusSchema(ma.Schema):
    """The session status document (stored pre-rendered; this schema documents it)."""

    session_id = fields.String()
    status = fields.String(metadata={"enum": list(STATUSES)})
    user_request = fields.String()
    report_requirements = fields.Nested(RequirementsSchema)
    current_agent = fields.String(allow_none=True)
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


class SessionListArgsSchema(ma.Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(validate=validate.Range(*LIMITS["page_size"]),
                           metadata={"description": "page size (default 50)"})
    cursor = fields.String(metadata={"description": "next_cursor of the previous page"})


class UTCTime(fields.DateTime):
    def _serialize(self, value, attr, obj, **kwargs):
        return iso(value)


class SessionSummarySchema(ma.Schema):
    session_id = fields.String(attribute="id")
    status = fields.String()
    topic = fields.String()
    current_agent = fields.String(allow_none=True)
    started_at = UTCTime(attribute="created_at")
    updated_at = UTCTime()


class SessionListSchema(ma.Schema):
    total_sessions = fields.Integer(metadata={"description": "sessions matching the filter"})
    sessions = fields.List(fields.Nested(SessionSummarySchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "pass as ?cursor= for the next page"})


class ReportSchema(ma.Schema):
    """The finished report: the output of the pipeline's last step (the publisher), with the session id."""

    session_id = fields.String()
    title = fields.String()
    markdown = fields.String()
    html = fields.String(metadata={"description": "a standalone HTML page with a print stylesheet"})
    word_count = fields.Integer()
    sources = fields.List(fields.Dict(), metadata={"description": "numbered as cited: [n] is sources[n-1]"})
    review = fields.Dict(allow_none=True, metadata={"description": "the reviewer's findings"})
    report = fields.Raw(metadata={"description": "a custom pipeline's last output, when it is not an object"})
