"""The listing's fast path takes its arguments from the view's schema: it answers exactly the requests the
Flask view would answer with a page, the same page, and leaves every other request to the view."""
import marshmallow as ma
import pytest
from conftest import SUBMISSION
from flask import request

from app.schemas import SessionListArgsSchema
from app.sessions.listing import ListingFastPath, QueryArguments

# Query strings and what the view answers them; the fast path must answer the 200s itself, alike.
# "<cursor>" is a real next_cursor. Lenient in places because webargs and marshmallow are.
QUERIES = {
    "": 200,
    "limit=2": 200,
    "limit=%202": 200,          # int() ignores surrounding spaces
    "limit=%2B2": 200,          # and takes a sign
    "limit=0_2": 200,           # and underscores
    "limit=%D9%A2": 200,        # and any Unicode digit (ARABIC-INDIC DIGIT TWO)
    "limit=500": 200,
    "limit=501": 422,
    "limit=0": 422,
    "limit=2.0": 422,
    "limit=": 422,
    "limit": 422,
    "limit=2&limit=x": 200,     # the first value counts
    "limit=x&limit=2": 422,
    "status=cancelled": 200,
    "status=": 422,
    "status=queued%20": 422,
    "owner=": 200,              # the sessions no one owns
    "owner=alice": 200,
    "owner=alice%0A": 200,      # a Regexp's `$` also matches before a final newline
    "owner=%00": 422,
    "owner=al%C3%ADce": 422,
    "cursor=": 200,
    "cursor=<cursor>": 200,
    "cursor=<cursor>%0A": 422,  # was a 500: the pattern passed it, the decoding did not
    "cursor=1.%FF": 200,        # invalid UTF-8 stays percent-encoded, as Flask decodes it
    "cursor=1.%E2%82": 200,
    "cursor=abc": 422,
    "foo=1&limit=1": 200,       # unknown arguments are ignored
    "=x": 200,
    "limit=2;status=queued": 422,
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_the_fast_path_answers_what_the_view_answers_with_a_page(app, client, monkeypatch, query):
    for _ in range(3):
        client.post("/api/submit-requirements", json=SUBMISSION)
    cursor = client.get("/api/sessions?limit=1").get_json()["next_cursor"]
    reached_flask = []
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: reached_flask.append(request.path))

    fast = client.get(f"/api/sessions?{query.replace('<cursor>', cursor)}")
    outer = app.wsgi_app.wsgi_app  # ResponseGuard, OperationsEndpoints, then the fast paths
    assert isinstance(outer.wsgi_app, ListingFastPath)
    monkeypatch.setattr(outer, "wsgi_app", outer.wsgi_app.wsgi_app)  # the view alone
    view = client.get(f"/api/sessions?{query.replace('<cursor>', cursor)}")

    assert view.status_code == QUERIES[query]
    assert fast.status_code == view.status_code and fast.get_json() == view.get_json()
    answered_by_fast_path = reached_flask == ["/api/sessions"]  # only the view's request reached Flask
    assert answered_by_fast_path == (view.status_code == 200)


def test_the_arguments_are_loaded_as_the_schema_loads_them():
    arguments = QueryArguments(SessionListArgsSchema())

    loaded = arguments.load("limit=%2B07&status=failed&owner=&cursor=1.x&cursor=junk&other=1")

    assert loaded == SessionListArgsSchema().load({"limit": "+07", "status": "failed", "owner": "", "cursor": "1.x"})
    assert arguments.load("status=failed&limit=0") is None


class WithDefault(ma.Schema):
    limit = ma.fields.Integer(load_default=50)


class WithHook(ma.Schema):
    limit = ma.fields.Integer()

    @ma.validates_schema
    def check(self, data, **kwargs):
        pass


class Repeated(ma.Schema):
    status = ma.fields.List(ma.fields.String())


@pytest.mark.parametrize("schema", [WithDefault, WithHook, Repeated])
def test_a_schema_that_loads_otherwise_is_refused_rather_than_loaded_differently(schema):
    with pytest.raises(ValueError):
        QueryArguments(schema())
