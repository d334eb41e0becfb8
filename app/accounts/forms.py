"""The sign-in and sign-out forms (Flask-WTF: each carries a CSRF token tied to the browser's cookie)."""
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from app.accounts.users import MAX_PASSWORD


class SignInForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)],
                       render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"})
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)],
                             render_kw={"autocomplete": "current-password"})
    next = HiddenField()


class SignOutForm(FlaskForm):
    """No fields: the CSRF token proves the sign-out came from our own page."""
