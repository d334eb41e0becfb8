"""Extension objects, created unbound; create_app() initialises them with init_app()."""
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_smorest import Api as _Api
from flask_smorest import Blueprint as _Blueprint
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from app.errors import ErrorSchema, json_error_response
from app.json_input import StrictJSONParser


class Base(DeclarativeBase):
    # Stable constraint names, so Alembic can name (and SQLite batch mode can drop) them.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Api(_Api):
    """flask-smorest's Api with this service's error shape: {"detail", "errors"}."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):
        return json_error_response(error)


class Blueprint(_Blueprint):
    """flask-smorest's Blueprint, reading JSON bodies strictly (app/json_input.py)."""

    ARGUMENTS_PARSER = StrictJSONParser()


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()
# The pages' sign-in cookie (Flask-Login over Flask's signed session) and its CSRF tokens.
login_manager = LoginManager()
csrf = CSRFProtect()
