"""Bounded work per session: one fetch budget for all of a session's URLs, and data tables cut to what a report shows.

URLs that never answer come from HangServer, a socket that reads the request and then waits for the client to hang
up, counting the connections it holds at once; pages and tables come from a small HTTP server. Budgets are a second
or two, so the tests are quick; elapsed times are only compared with the budget plus a wide margin.
"""
import http.server
import json
import re
import socket
import threading
import time

import pytest
from matplotlib.axes import Axes
from servers import StandIn

from app.pipeline import Context, StepOutput, analyst, api_research
from app.pipeline.analyst import MAX_CHART_SERIES, MAX_TABLE_SERIES, Analyst
from app.pipeline.api_research import MAX_ROWS, MAX_SERIES, MAX_URL_DATASETS, ApiResearch, load_dataset
from app.pipeline.data_collection import DataCollection
from app.pipeline.planner import Planner
from app.pipeline.publisher import Publisher
from app.pipeline.reviewer import Reviewer
from app.pipeline.web import OUT_OF_TIME, FetchRefused, Fetched, fetch_each
from app.pipeline.writer import Writer

MARGIN = 3.0  # seconds beyond a budget that a slow machine may take; ten URLs' own timeouts would be 100
OUT_OF_BUDGET = re.compile(rf"^(cut off after \d+\.\d s|not fetched): {OUT_OF_TIME}$")
PAGE = ("<html><head><title>Electric cars in town</title></head><body><article><p>Electric car sales in the town "
        "doubled last year as the council added public chargers to every car park and street.</p></article>"
        "</body></html>")


class HangServer:
    """Accepts connections and never answers; counts them, and the most it held open at once."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = self.open = self.peak = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.accepted += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn):
        with conn:
            try:
                while conn.recv(4096):  # the request, then nothing until the client gives up
                    pass
            except OSError:
                pass
        with self.lock:
            self.open -= 1


class Site(StandIn):
    def do_GET(self):
        content_type, body = self.server.routes.get(self.path, ("text/plain", b""))
        self.server.requested.append(self.path)
        self.reply(body, content_type, 200 if body else 404)


@pytest.fixture
def hang():
    server = HangServer()
    yield server
    server.sock.close()


@pytest.fixture
def site():
    """A page and whatever tables a test adds: site.routes[path] = (content type, bytes); site.url(path)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    httpd.daemon_threads = True
    httpd.routes = {"/page.html": ("text/html", PAGE.encode())}
    httpd.requested = []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run_steps(library, agents, topic="Electric Car Market", settings=None, outputs=None, **requirements):
    """Run agents in order as the runner would; (outputs, artifacts, seconds each step took)."""
    artifacts, seconds = {}, {}
    context = Context("test-session", f"A report on the {topic.lower()}",
                      {"topic": topic, "page_count": 1, "source_count": 2, "complexity": "simple", **requirements},
                      dict(outputs or {}),
                      {"LIBRARY_DIR": str(library), "ALLOW_PRIVATE_URLS": True, **(settings or {})},
                      artifact=lambda name: artifacts[name][1])
    for agent in agents:
        started = time.monotonic()
        result = agent.run(context)
        seconds[agent.name] = time.monotonic() - started
        if isinstance(result, StepOutput):
            artifacts.update(result.artifacts)
            result = result.output
        context.outputs[agent.name] = result
    return context.outputs, artifacts, seconds


def wide_csv(names, columns, years=range(2015, 2025)) -> bytes:
    """A CSV: year, then one column per name, values from columns[name](row number) ("" for a gap)."""
    lines = ["year," + ",".join(names)]
    lines += [f"{year}," + ",".join(str(columns[name](row)) for name in names) for row, year in enumerate(years)]
    return ("\n".join(lines) + "\n").encode()


# -- fetch_each: one budget, a few at a time, in the order given --------------------------------------

def test_urls_are_fetched_a_few_at_a_time_and_come_back_in_the_order_given(hang, site):
    urls = [hang.url("a"), site.url("/page.html"), hang.url("b"), site.url("/missing")]
    started = time.monotonic()

    results = list(fetch_each(urls, seconds=1.5, concurrency=3, timeout=10, allow_private=True))

    assert time.monotonic() - started < 1.5 + MARGIN
    assert [url for url, _ in results] == urls
    (_, a), (_, page), (_, b), (_, missing) = results
    assert isinstance(page, Fetched) and b"Electric car sales" in page.body
    assert isinstance(missing, FetchRefused) and missing.reason == "HTTP 404"
    for refused in (a, b):
        assert isinstance(refused, FetchRefused) and OUT_OF_BUDGET.match(refused.reason)
        assert refused.reason.startswith("cut off after 1.")  # its share of the 1.5 s, not its own 10 s
    assert hang.peak == 2  # both silent URLs were held at once, not one after the other


def test_the_budget_covers_all_urls_and_those_whose_turn_comes_too_late_are_not_started(hang):
    urls = [hang.url(f"u{i}") for i in range(6)]
    started = time.monotonic()

    results = dict(fetch_each(urls, seconds=1, concurrency=2, timeout=10, allow_private=True))

    assert time.monotonic() - started < 1 + MARGIN
    reasons = [results[url].reason for url in urls]
    assert all(OUT_OF_BUDGET.match(reason) for reason in reasons), reasons
    assert [r.split(":")[0] for r in reasons] == ["cut off after 1.0 s"] * 2 + ["not fetched"] * 4
    assert hang.accepted == 2 and hang.peak == 2


def test_a_url_that_times_out_within_the_budget_says_so_in_its_own_words(hang):
    (_, result), = fetch_each([hang.url("slow")], seconds=30, timeout=0.5, allow_private=True)

    assert result.reason == "timed out after 0.5 s"


def test_closing_early_starts_no_further_url(hang, site):
    urls = [site.url("/page.html")] + [hang.url(f"u{i}") for i in range(3)]
    results = fetch_each(urls, seconds=10, concurrency=1, timeout=0.5, allow_private=True)

    url, first = next(results)
    results.close()  # the caller has enough
    time.sleep(1.2)  # a pool that went on would have started the next silent URL when the first timed out

    assert url == urls[0] and isinstance(first, Fetched)
    assert hang.accepted <= 1  # at most the one already running when the caller stopped


# -- the steps: one budget for the session's pages and data URLs ----------------------------------------

def test_urls_that_never_answer_cost_a_session_its_fetch_budget_and_the_report_is_still_made(library, hang):
    pages, data = [hang.url(f"u{i}") for i in range(5)], [hang.url(f"d{i}.csv") for i in range(5)]
    settings = {"FETCH_BUDGET": 2, "FETCH_TIMEOUT": 10, "FETCH_CONCURRENCY": 2}

    outputs, artifacts, seconds = run_steps(
        library, [Planner(), DataCollection(), ApiResearch(), Analyst(), Writer(), Reviewer(), Publisher()],
        settings=settings, urls=pages, data_urls=data)

    assert seconds["data_collection"] + seconds["api_research"] < 2 + MARGIN
    collected, researched = outputs["data_collection"], outputs["api_research"]
    assert [s["url"] for s in collected["skipped"]] == pages  # in the order the request named them
    assert [s["url"] for s in researched["skipped"]] == data
    reasons = [s["reason"] for s in collected["skipped"] + researched["skipped"]]
    assert all(OUT_OF_BUDGET.match(reason) for reason in reasons), reasons
    # Five pages of ten URLs: the pages' share is half the budget, and the data URLs get what is left.
    assert [r for r in reasons[:5] if r.startswith("cut off")] == [f"cut off after 1.0 s: {OUT_OF_TIME}"] * 2
    assert 0.9 <= collected["fetch_seconds"] < 1 + MARGIN
    assert hang.peak == 2 and hang.accepted <= 4  # FETCH_CONCURRENCY at once, at most two per step
    # The report is made from the library, as if the URLs had not been named.
    assert collected["sources"] and all(s["location"].startswith("library:") for s in collected["sources"])
    assert outputs["writer"]["markdown"] and "report.pdf" in artifacts


def test_the_data_urls_get_only_what_the_pages_left_also_when_the_step_runs_again(library, hang):
    settings = {"FETCH_BUDGET": 30, "FETCH_TIMEOUT": 10}
    outputs, _, _ = run_steps(library, [Planner(), DataCollection()], settings=settings)
    data = [hang.url("d0.csv"), hang.url("d1.csv")]

    outputs["data_collection"]["fetch_seconds"] = 29  # the pages took all but a second
    again, _, seconds = run_steps(library, [ApiResearch()], settings=settings, outputs=outputs, data_urls=data)

    assert seconds["api_research"] < 1 + MARGIN
    assert [s["reason"] for s in again["api_research"]["skipped"]] == [f"cut off after 1.0 s: {OUT_OF_TIME}"] * 2

    outputs["data_collection"]["fetch_seconds"] = 30  # nothing left
    accepted = hang.accepted
    spent, _, _ = run_steps(library, [ApiResearch()], settings=settings, outputs=outputs, data_urls=data)

    assert [s["reason"] for s in spent["api_research"]["skipped"]] == [f"not fetched: {OUT_OF_TIME}"] * 2
    assert hang.accepted == accepted  # not even a connection


def test_pages_beyond_source_count_are_skipped_and_the_budget_left_goes_to_the_data_urls(library, hang, site):
    site.routes["/sales.csv"] = ("text/csv", b"year,sales\n2022,10\n2023,14\n")
    pages = [site.url("/page.html"), hang.url("late")]

    outputs, _, _ = run_steps(library, [Planner(), DataCollection(), ApiResearch()], source_count=1,
                              settings={"FETCH_BUDGET": 20, "FETCH_TIMEOUT": 2}, urls=pages,
                              data_urls=[site.url("/sales.csv")])

    collected = outputs["data_collection"]
    assert [s["location"] for s in collected["sources"]] == [site.url("/page.html")]
    assert collected["skipped"] == [{"url": hang.url("late"), "reason": "source_count (1) already reached"}]
    assert collected["fetch_seconds"] < MARGIN  # it did not wait for the silent page it no longer needed
    assert outputs["api_research"]["datasets"][0]["columns"] == ["year", "sales"]


def test_at_most_a_few_data_urls_become_tables_in_the_order_named(library, site):
    urls = []
    for i in range(MAX_URL_DATASETS + 2):
        site.routes[f"/t{i}.csv"] = ("text/csv", f"# Title: Table {i}\nyear,sales\n2022,{i}\n2023,{i + 1}\n".encode())
        urls.append(site.url(f"/t{i}.csv"))

    outputs, _, _ = run_steps(library, [Planner(), DataCollection(), ApiResearch()], data_urls=urls)

    research = outputs["api_research"]
    titles = [d["title"] for d in research["datasets"]]
    assert titles == [f"Table {i}" for i in range(MAX_URL_DATASETS)]
    assert [s["url"] for s in research["skipped"]] == urls[MAX_URL_DATASETS:]
    assert all(f"at most {MAX_URL_DATASETS} data tables" in s["reason"] for s in research["skipped"])


# -- wide tables: the series that matter, and the cut said out loud ------------------------------------------

def test_a_wide_table_keeps_the_series_that_matter_and_the_report_says_what_was_cut(library, site, monkeypatch):
    names = [f"series_{i}" for i in range(2000)]
    values = {name: (lambda row, i=i: (row + 1) * (i % 7 + 1)) for i, name in enumerate(names)}
    names[700], names[1900] = "car_sales_north", "electric_fleet"  # named like the topic, but small
    values["car_sales_north"] = values["electric_fleet"] = lambda row: row + 1
    names[1000] = "huge_but_gappy"  # the largest numbers, but three years missing
    values["huge_but_gappy"] = lambda row: "" if row in (2, 5, 8) else 10 ** 6
    site.routes["/wide.csv"] = ("text/csv", wide_csv(names, values))
    plotted = []
    real_plot = Axes.plot

    def plot(axes, *args, **kwargs):
        plotted.append(kwargs.get("label"))
        return real_plot(axes, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)

    outputs, artifacts, _ = run_steps(library, [Planner(), DataCollection(), ApiResearch(), Analyst(), Writer()],
                                      data_urls=[site.url("/wide.csv")])

    wide = next(d for d in outputs["api_research"]["datasets"] if d["location"] == site.url("/wide.csv"))
    largest = [n for n in names if n.startswith("series_") and int(n.split("_")[1]) % 7 == 6][:MAX_SERIES - 2]
    kept = largest + ["car_sales_north", "electric_fleet"]
    assert wide["columns"] == ["year", *[name for name in names if name in kept]]  # in the file's order
    assert wide["cut"]["series_total"] == 2000 and wide["cut"]["rows_total"] == 10
    note = wide["cut"]["note"]
    assert note == (f"The source table was cut to {MAX_SERIES} of its 2,000 series (named like the topic first, then "
                    "the most complete and largest).")

    number = outputs["api_research"]["datasets"].index(wide) + 1
    tables = [t for t in outputs["analyst"]["tables"] if t["dataset"] == number]
    assert len(tables) == 1  # no shares: the total would leave out the series that were cut
    assert len(tables[0]["rows"]) == MAX_SERIES and note in tables[0]["caption"]
    assert not any(f["kind"] == "share" for f in outputs["analyst"]["findings"] if f["dataset"] == number)
    chart = next(c for c in outputs["analyst"]["charts"] if c["dataset"] == number)
    assert note in chart["caption"] and f"The {MAX_CHART_SERIES} largest of its {MAX_SERIES} series" in chart["caption"]
    assert number == 1  # data URLs' tables come first: its chart is drawn first, the 8 largest in 2024 of 12
    assert plotted[:MAX_CHART_SERIES] == [name.replace("_", " ") for name in largest[:MAX_CHART_SERIES]]
    others = outputs["api_research"]["datasets"][1:]
    assert len(plotted) == MAX_CHART_SERIES + sum(len(d["columns"]) - 1 for d in others)
    assert artifacts[chart["png"]][1].startswith(b"\x89PNG")
    assert note in outputs["writer"]["markdown"]  # the reader sees it, under the table and the chart


@pytest.fixture
def pandas_widths(monkeypatch):
    """The width of every CSV pandas is asked to read; one wider than a kept table fails before pandas reads it."""
    widths = []
    real_read_csv = api_research.pd.read_csv

    def read_csv(source, **kwargs):
        # Checked before reading: without narrowing, pandas would take minutes over these tables.
        header = source.getvalue().split("\n", 1)[0]
        assert header.count(",") <= MAX_SERIES, f"pandas was given {header.count(',') + 1:,} columns"
        frame = real_read_csv(source, **kwargs)
        widths.append(frame.shape[1])
        return frame

    monkeypatch.setattr(api_research.pd, "read_csv", read_csv)
    return widths


def test_a_table_of_very_many_columns_is_narrowed_before_pandas_reads_it(pandas_widths):
    columns = 200_000  # about 2 MB: as wide as a table within FETCH_MAX_BYTES gets
    raw = ("year," + ",".join(f"c{i}" for i in range(columns)) + "\n2020," + ",".join(["1"] * columns) + "\n"
           + "2021," + ",".join(["2"] * columns) + "\n").encode()

    dataset = load_dataset(raw, ".csv", "http://example.org/wide.csv", "Wide table")

    assert pandas_widths == [MAX_SERIES + 1]  # pandas saw the year and the series kept, not 200,000 columns
    assert dataset["columns"] == ["year", *[f"c{i}" for i in range(MAX_SERIES)]]
    assert dataset["cut"]["note"].startswith(f"The source table was cut to {MAX_SERIES} of its 200,000 series")


def test_a_wide_header_over_many_short_rows_is_narrowed_too(pandas_widths):
    # Not many columns, but pandas pads each short row to the header's width: 150 x 30,000 cells from 400 KB;
    # 2 MB of such rows would be 200 million.
    raw = ("year," + ",".join(f"c{i}" for i in range(150)) + "\n"
           + "".join(f"{1000 + row},{row}\n" for row in range(30_000))).encode()

    dataset = load_dataset(raw, ".csv", "http://example.org/sparse.csv", "Sparse table")

    assert pandas_widths == [2]  # the year and c0, the one column with numbers
    assert dataset["columns"] == ["year", "c0"] and dataset["rows"][-1] == [30_999, 29_999]
    assert dataset["cut"] == {"series_total": 1, "rows_total": 30_000,
                              "note": f"The source table was cut to the latest {MAX_ROWS} of its 30,000 rows."}


@pytest.mark.parametrize("layout", ["records", "columns", "rows"])
def test_wide_json_tables_are_narrowed_the_same_way(layout, monkeypatch):
    names = ["year", *[f"s{i}" for i in range(3000)], "heat_pump_sales"]
    rows = [[2020 + r, *[r + 1] * 3000, 1] for r in range(3)]
    data = {"records": [dict(zip(names, row)) for row in rows],
            "columns": {name: [row[i] for row in rows] for i, name in enumerate(names)},
            "rows": {"title": "Heat pumps", "columns": names, "rows": rows}}[layout]
    widths = []
    real_frame = api_research._frame

    def frame(make):
        built = real_frame(make)
        widths.append(built.shape[1])
        return built

    monkeypatch.setattr(api_research, "_frame", frame)

    dataset = load_dataset(json.dumps(data).encode(), ".json", "http://example.org/t.json", "Heat pumps")

    assert widths == [MAX_SERIES + 1]
    assert dataset["columns"] == ["year", *[f"s{i}" for i in range(MAX_SERIES - 1)], "heat_pump_sales"]
    assert dataset["cut"]["series_total"] == 3001


def test_a_long_table_of_many_categories_keeps_the_largest_and_a_long_history_its_latest_rows():
    lines = ["year,country,sales"] + [f"{year},country {c},{c * 10 + year - 2000}" for c in range(40)
                                      for year in range(2000, 2000 + MAX_ROWS + 50)]
    dataset = load_dataset(("\n".join(lines) + "\n").encode(), ".csv", "library:sales.csv", "Sales")

    assert dataset["columns"] == ["year", *[f"country {c}" for c in range(40 - MAX_SERIES, 40)]]
    assert len(dataset["rows"]) == MAX_ROWS and dataset["rows"][0][0] == 2050 and dataset["rows"][-1][0] == 2249
    assert dataset["cut"]["note"] == (f"The source table was cut to {MAX_SERIES} of its 40 series (the most "
                                      f"complete and largest) and the latest {MAX_ROWS} of its 250 rows.")


def test_the_analyst_shows_a_bounded_number_of_series_of_a_dataset_that_was_not_cut(monkeypatch):
    series = [f"region_{i}" for i in range(20)]
    dataset = {"title": "Sales by region", "source": "Test", "unit": "", "location": "library:x.csv", "cut": None,
               "columns": ["year", *series], "rows": [[2023, *range(1, 21)], [2024, *range(2, 22)]]}
    plotted = []
    real_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda axes, *a, **kw: plotted.append(kw["label"]) or real_plot(axes, *a, **kw))

    growth, shares = analyst.analyse(dataset, 1, 0)
    chart = analyst.chart_of(dataset, 1, 1)
    analyst.render_chart(dataset)

    largest = [f"region {i}" for i in range(20 - MAX_TABLE_SERIES, 20)]
    assert [row[0] for row in growth["rows"]] == largest
    assert [row[1] for row in shares["rows"]] == largest[::-1]  # ranked; shares of the whole total still
    assert shares["rows"][0][3] == f"{21 / sum(range(2, 22)) * 100:.1f}%"
    assert f"The {MAX_TABLE_SERIES} largest of its 20 series in 2024 are shown." in growth["caption"]
    assert plotted == [f"region {i}" for i in range(20 - MAX_CHART_SERIES, 20)]
    assert f"The {MAX_CHART_SERIES} largest of its 20 series in 2024 are shown." in chart["caption"]


def test_the_budget_settings_reach_the_steps(database, monkeypatch):
    from app import create_app
    from app.runner import agent_settings

    monkeypatch.setenv("REPORTS_FETCH_BUDGET", "3")
    monkeypatch.setenv("REPORTS_FETCH_CONCURRENCY", "2")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database.url})

    assert {k: agent_settings(app)[k] for k in ("FETCH_BUDGET", "FETCH_CONCURRENCY")} == \
        {"FETCH_BUDGET": 3, "FETCH_CONCURRENCY": 2}
