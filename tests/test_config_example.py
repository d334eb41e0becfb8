"""instance/config.py.example names every setting with its true default, and works once copied."""
import ast
import re
from pathlib import Path

import app.config as defaults
from app import create_app

EXAMPLE = Path(__file__).resolve().parent.parent / "instance" / "config.py.example"
SETTING = re.compile(r"^# ([A-Z][A-Z0-9_]+) = (.+)$")


def example_settings() -> dict[str, str]:
    return dict(SETTING.match(line).groups() for line in EXAMPLE.read_text().splitlines() if SETTING.match(line))


def test_the_example_names_every_setting_and_its_default():
    shown = example_settings()
    settings = {name for name in dir(defaults) if name.isupper()}

    assert settings - set(shown) == set()  # none missing
    assert set(shown) - settings == {"SQLALCHEMY_DATABASE_URI"}  # and none made up (the URI is set in create_app)
    for name in settings:
        if shown[name].startswith("("):  # described, not written out
            continue
        assert ast.literal_eval(shown[name]) == getattr(defaults, name), name


def test_the_example_copied_as_it_is_changes_nothing_and_an_uncommented_line_takes_effect(tmp_path):
    text = EXAMPLE.read_text()
    (tmp_path / "config.py").write_text(text)
    assert compile(text, "config.py", "exec")  # every line a comment: nothing to go wrong

    (tmp_path / "config.py").write_text(text.replace("# RUNNER_THREADS = 4", "RUNNER_THREADS = 7"))
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    app.config.from_pyfile(str(tmp_path / "config.py"))  # as create_app reads instance/config.py
    assert app.config["RUNNER_THREADS"] == 7
