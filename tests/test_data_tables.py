"""Data tables anywhere in the library, in wide or long form, and the analyst's findings in sentences."""
import functools
import http.server
import json
import threading

import pytest

from app.pipeline import Context, StepOutput
from app.pipeline.analyst import Analyst
from app.pipeline.api_research import ApiResearch
from app.pipeline.data_collection import DataCollection
from app.pipeline.planner import Planner

# Heat pump sales in long form (country, year, sales), latest year first: the table must sort them.
SALES = {"France": {2015: 180, 2020: 260, 2023: 400, 2024: 520},
         "Germany": {2015: 100, 2020: 210, 2023: 356, 2024: 193},
         "Italy": {2015: 60, 2020: 150, 2023: 300, 2024: 424}}
PRICES = [{"year": 2020, "price": 12000}, {"year": 2022, "price": 13500}, {"year": 2024, "price": 9800}]


@pytest.fixture
def heat_library(tmp_path):
    """A library about heat pumps: one document, tables at the root and in subfolders, and files that are not tables."""
    folder = tmp_path / "library"
    (folder / "data").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "heat-pumps.md").write_text(
        "# Heat pumps\n\nSource: Test Heat Pump Association 2025\nRetrieved: 2025-01-15\n\n"
        "Heat pump sales in Europe grew for most of the decade. Heat pumps move heat instead of burning fuel, "
        "so a heat pump uses a third of the energy of a gas boiler. Sales of heat pumps fell in Germany in 2024 "
        "after the heat pump subsidy changed. France remained the largest heat pump market in 2024.\n")
    lines = [f"{country},{year},{years[year]}" for country, years in SALES.items() for year in sorted(years)[::-1]]
    (folder / "heat_pump_sales.csv").write_text("country,year,sales\n" + "\n".join(lines) + "\n")
    (folder / "data" / "heat_pump_prices.json").write_text(json.dumps({
        "title": "Heat pump prices", "unit": "EUR per unit", "source": "Test Heat Pump Association",
        "retrieved": "2025-01-15", "data": PRICES}))
    (folder / "data" / "tea_harvests.csv").write_text("year,harvest\n2020,5\n2021,6\n")
    (folder / "data" / "heat_pump_notes.csv").write_text("name,comment\nheat pumps,a note\nboilers,another\n")
    (folder / "data" / "heat_pump_installs.json").write_text('{"year": [2020, 2021], "installs": ')
    (folder / ".git" / "heat_pump_sales.csv").write_text("year,sales\n2020,1\n")
    return folder


def research(library, topic="Heat Pumps", subject_words=None, **requirements):
    """Planner, data collection, API research and analyst on the library; subject_words replaces the collected ones."""
    context = Context("test-session", f"A report on {topic.lower()}",
                      {"topic": topic, "page_count": 1, "source_count": 1, "complexity": "simple", **requirements},
                      settings={"LIBRARY_DIR": str(library), "ALLOW_PRIVATE_URLS": True})
    for agent in (Planner(), DataCollection(), ApiResearch(), Analyst()):
        if agent.name == "api_research" and subject_words is not None:
            context.outputs["data_collection"]["subject_words"] = subject_words
        result = agent.run(context)
        context.outputs[agent.name] = result.output if isinstance(result, StepOutput) else result
    return context.outputs


def dataset(outputs, location):
    """(number, dataset) of the dataset loaded from a location; numbers are 1-based as in tables and charts."""
    datasets = outputs["api_research"]["datasets"]
    return next((n, d) for n, d in enumerate(datasets, start=1) if d["location"] == location)


def findings(outputs, number, kind=None):
    return [f["text"] for f in outputs["analyst"]["findings"]
            if f["dataset"] == number and (kind is None or f["kind"] == kind)]


def cagr(start, end, years):
    return ((end / start) ** (1 / years) - 1) * 100


# -- tables anywhere in the library ----------------------------------------------------------------

def test_tables_at_the_root_and_in_subfolders_are_used_and_hidden_ones_are_not(heat_library):
    research_output = research(heat_library)["api_research"]

    locations = [d["location"] for d in research_output["datasets"]]
    assert sorted(locations) == ["library:data/heat_pump_prices.json", "library:heat_pump_sales.csv"]
    assert research_output["data_files_searched"] == 5  # .git's copy is not the user's table
    assert not any(".git" in s["url"] for s in research_output["skipped"])
    for d in research_output["datasets"]:
        assert set(d) == {"title", "source", "published_retrieved", "retrieved_at", "unit", "location",
                          "content_hash", "columns", "rows", "cut"}
        assert d["cut"] is None  # small tables are kept whole


def test_a_long_table_becomes_one_series_per_category(heat_library):
    _, sales = dataset(research(heat_library), "library:heat_pump_sales.csv")

    assert sales["title"] == "Heat pump sales"  # from the file name
    assert sales["columns"] == ["year", "France", "Germany", "Italy"]
    years = sorted(SALES["France"])
    assert sales["rows"] == [[year, *(SALES[country][year] for country in SALES)] for year in years]


def test_a_json_table_keeps_its_title_unit_and_source(heat_library):
    _, prices = dataset(research(heat_library), "library:data/heat_pump_prices.json")

    assert (prices["title"], prices["unit"]) == ("Heat pump prices", "EUR per unit")
    assert (prices["source"], prices["published_retrieved"]) == ("Test Heat Pump Association", "2025-01-15")
    assert prices["columns"] == ["year", "price"]
    assert prices["rows"] == [[p["year"], p["price"]] for p in PRICES]


def test_a_file_that_is_not_a_table_is_skipped_with_its_reason(heat_library):
    outputs = research(heat_library)

    reasons = {s["url"]: s["reason"] for s in outputs["api_research"]["skipped"]}
    assert set(reasons) == {"library:data/heat_pump_installs.json", "library:data/heat_pump_notes.csv"}
    assert reasons["library:data/heat_pump_installs.json"].startswith("not valid JSON")
    assert "no numeric column" in reasons["library:data/heat_pump_notes.csv"]
    assert len(outputs["api_research"]["datasets"]) == 2  # the rest still load
    assert outputs["analyst"]["tables"] and outputs["analyst"]["charts"]


def test_subject_words_choose_the_tables_and_none_means_no_library_tables(heat_library):
    prices = research(heat_library, subject_words=["prices"])["api_research"]
    assert [d["location"] for d in prices["datasets"]] == ["library:data/heat_pump_prices.json"]

    nothing = research(heat_library, subject_words=[])
    assert nothing["api_research"]["datasets"] == [] and nothing["analyst"]["findings"] == []


def test_data_urls_load_even_when_the_library_does_not_cover_the_subject(heat_library, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "boilers.csv").write_text("# Title: Gas boiler sales\nyear,sales\n2020,900\n2024,700\n")
    handler = functools.partial(Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/boilers.csv"
        outputs = research(heat_library, subject_words=[], data_urls=[url])
    finally:
        httpd.shutdown()
        httpd.server_close()

    assert [d["title"] for d in outputs["api_research"]["datasets"]] == ["Gas boiler sales"]
    assert findings(outputs, 1)[0].startswith("Gas boiler sales fell from 900 in 2020 to 700 in 2024")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# -- findings ----------------------------------------------------------------------------------------

def test_the_headline_is_the_largest_series_growth_with_the_tables_numbers(heat_library):
    outputs = research(heat_library)
    number, _ = dataset(outputs, "library:heat_pump_sales.csv")
    first, last = min(SALES["France"]), max(SALES["France"])
    largest = max(SALES, key=lambda country: SALES[country][last])
    start, end = SALES[largest][first], SALES[largest][last]
    rate = cagr(start, end, last - first)

    texts = findings(outputs, number)
    assert texts[0] == (f"Heat pump sales in {largest} rose from {start} in {first} to {end} in {last}, "
                        f"{rate:.1f}% a year.")
    assert 2 <= len(texts) <= 4 and all(t.endswith(".") and "[" not in t for t in texts)
    growth = next(t for t in outputs["analyst"]["tables"] if t["dataset"] == number)
    assert next(row for row in growth["rows"] if row[0] == largest)[1:] == [start, end, end - start, f"{rate:+.1f}%"]


def test_the_largest_share_is_stated_of_the_latest_total(heat_library):
    outputs = research(heat_library)
    number, _ = dataset(outputs, "library:heat_pump_sales.csv")
    last = max(SALES["France"])
    total = sum(years[last] for years in SALES.values())
    largest = max(SALES, key=lambda country: SALES[country][last])

    assert findings(outputs, number, "share") == [
        f"In {last} {largest} held the largest share of heat pump sales, "
        f"{SALES[largest][last] / total * 100:.1f}% of the {total:,} total."]
    assert total >= 1000  # so the thousands separator is tested


def test_a_decline_says_fell_and_a_peak_only_when_the_maximum_is_not_the_latest(heat_library):
    outputs = research(heat_library)
    prices_number, _ = dataset(outputs, "library:data/heat_pump_prices.json")
    sales_number, _ = dataset(outputs, "library:heat_pump_sales.csv")
    first, peak, last = PRICES[0], max(PRICES, key=lambda p: p["price"]), PRICES[-1]
    rate = -cagr(first["price"], last["price"], last["year"] - first["year"])

    assert findings(outputs, prices_number)[0] == (
        f"Heat pump prices fell from {first['price']:,} EUR per unit in {first['year']} to {last['price']:,} "
        f"EUR per unit in {last['year']}, {rate:.1f}% a year.")
    assert findings(outputs, prices_number, "peak") == [
        f"Heat pump prices peaked at {peak['price']:,} EUR per unit in {peak['year']} before falling to "
        f"{last['price']:,} EUR per unit in {last['year']}."]
    assert findings(outputs, prices_number, "share") == []  # prices do not add up to a total

    # Germany's sales peaked before the latest year; France's and Italy's are highest in it.
    fallen = [c for c, years in SALES.items() if max(years.values()) != years[max(years)]]
    assert fallen == ["Germany"]
    years = SALES["Germany"]
    top = max(years, key=years.get)
    assert findings(outputs, sales_number, "peak") == [
        f"Heat pump sales in Germany peaked at {years[top]} in {top} before falling to {years[max(years)]} "
        f"in {max(years)}."]


def test_a_single_row_gives_the_overall_total(heat_library):
    stock = {"France": 1.25, "Italy": 2.5}
    (heat_library / "heat_pump_stock.csv").write_text(
        f"# Unit: million units\nyear,{','.join(stock)}\n2024,{','.join(map(str, stock.values()))}\n")

    outputs = research(heat_library)
    number, _ = dataset(outputs, "library:heat_pump_stock.csv")
    total = sum(stock.values())

    assert [f["kind"] for f in outputs["analyst"]["findings"] if f["dataset"] == number] == ["overall", "share"]
    assert findings(outputs, number) == [
        f"In 2024 heat pump stock totalled {total:g} million units across Italy and France.",
        f"In 2024 Italy held the largest share of heat pump stock, {stock['Italy'] / total * 100:.1f}% of the "
        f"total of {total:g} million units."]
