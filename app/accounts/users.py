"""Users: every write to the users table, and the lookups that authenticate a request.

API tokens are random 256-bit strings, stored as SHA-256 hashes (a slow hash adds nothing against
guessing a random 256-bit value, and every API request looks one up). Passwords are stored with
werkzeug's scrypt hash. Users are revoked, never deleted, so the service, closed once the first
user exists, never reopens by accident.
"""
import hashlib
import re
import secrets
from dataclasses import dataclass
from functools import cache
from datetime import datetime
from typing import Optional

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app.database import write_transaction
from app.models import NAME_PATTERN, User, utcnow
from app.runner.compiled import CompiledStatement

U = User.__table__

_NAME = re.compile(NAME_PATTERN)
# ASVS 2.1: at least 12 characters, long passphrases welcome, no rules about character classes.
MIN_PASSWORD, MAX_PASSWORD = 12, 1024


class AccountError(Exception):
    """A user operation that cannot be done (bad name, no such user...), with a message for the operator."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    is_admin: bool
    has_token: bool
    has_password: bool
    sign_in_epoch: int
    created_at: datetime
    revoked_at: Optional[datetime]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown, so a wrong name takes as long as a wrong password.

    Made at the first sign-in, not at import: an scrypt hash costs ~0.1 s, and every worker and
    CLI command imports this module.
    """
    return generate_password_hash(secrets.token_urlsafe(16))


def check_password_rules(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"A password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters.")


class Users:
    def __init__(self, engine: Engine):
        self.engine = engine
        dialect = engine.dialect
        self._any = CompiledStatement(select(U.c.id).limit(1), dialect)
        self._by_token = CompiledStatement(
            select(U.c.name, U.c.is_admin).where(U.c.token_hash == bindparam("hash"), U.c.revoked_at.is_(None)),
            dialect)
        self._exist = False

    # -- lookups (every request) -------------------------------------------------------------

    def exist(self, known: Optional[bool] = None) -> bool:
        """Whether any user exists. Once true it stays true (users are never deleted): asked no more.

        `known`: the answer a query made anyway found (the status poll reads it with the session), saving one.
        """
        if not self._exist:
            self._exist = bool(self._any.read(self.engine, {})) if known is None else known
        return self._exist

    @property
    def known_to_exist(self) -> bool:
        """True once this process has seen a user: then exist() costs nothing."""
        return self._exist

    def by_token(self, token: str) -> Optional[tuple[str, bool]]:
        """(name, is_admin) of the active user holding this API token, else None. Read every time: a
        revocation takes effect on the next request, in every process."""
        if not token or len(token) > 256:
            return None
        rows = self._by_token.read(self.engine, {"hash": token_hash(token)})
        return (rows[0][0], bool(rows[0][1])) if rows else None

    def get(self, name: str) -> Optional[Account]:
        row = self._row(U.c.name == name)
        return _account(row) if row is not None else None

    def by_id(self, user_id: int) -> Optional[Account]:
        row = self._row(U.c.id == user_id)
        return _account(row) if row is not None else None

    def check_sign_in(self, name: str, password: str) -> Optional[Account]:
        """The active account with this name and password, else None (in about the same time either way)."""
        row = self._row(U.c.name == name) if _NAME.fullmatch(name or "") else None
        stored = row.password_hash if row is not None else None
        matches = check_password_hash(stored or _dummy_hash(), password or "")
        if stored is None or not matches or row.revoked_at is not None:
            return None
        return _account(row)

    def _row(self, condition):
        """The users row matching `condition` (password hash included), or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(U).where(condition)).first()

    def all(self) -> list[Account]:
        with self.engine.connect() as conn:
            return [_account(row) for row in conn.execute(select(U).order_by(U.c.name))]

    # -- changes (the CLI, and sign-out) ---------------------------------------------------------

    def create(self, name: str, is_admin: bool = False, password: Optional[str] = None) -> str:
        """Create a user; returns their new API token (only its hash is kept)."""
        if not _NAME.fullmatch(name):
            raise AccountError("A user name is 1 to 64 letters, digits, '.', '_', '@' or '-', "
                               "starting with a letter or digit.")
        if password is not None:
            check_password_rules(password)
        token = new_token()
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(insert(U).values(
                    name=name, is_admin=is_admin, token_hash=token_hash(token), sign_in_epoch=0,
                    password_hash=generate_password_hash(password) if password is not None else None,
                    created_at=utcnow(), revoked_at=None))
        except IntegrityError:
            raise AccountError(f"A user named '{name}' exists already.") from None
        self._exist = True
        return token

    def issue_token(self, name: str) -> str:
        """A new API token for the user (the old one stops working); it also lifts a revocation."""
        token = new_token()
        self._update(name, token_hash=token_hash(token), revoked_at=None)
        return token

    def set_password(self, name: str, password: str) -> None:
        """A new password for the pages; every page sign-in made with the old one ends."""
        check_password_rules(password)
        self._update(name, password_hash=generate_password_hash(password), sign_in_epoch=U.c.sign_in_epoch + 1)

    def revoke(self, name: str) -> None:
        """The user's token stops working and their page sign-ins end, at once; they cannot sign in again."""
        self._update(name, token_hash=None, revoked_at=utcnow(), sign_in_epoch=U.c.sign_in_epoch + 1)

    def end_sign_ins(self, user_id: int) -> None:
        """Sign out: every page sign-in of this user, in every browser, ends."""
        with write_transaction(self.engine) as conn:
            conn.execute(update(U).where(U.c.id == user_id).values(sign_in_epoch=U.c.sign_in_epoch + 1))

    def _update(self, name: str, **values) -> None:
        with write_transaction(self.engine) as conn:
            if conn.execute(update(U).where(U.c.name == name).values(**values)).rowcount != 1:
                raise AccountError(f"There is no user named '{name}'.")


def _account(row) -> Account:
    return Account(id=row.id, name=row.name, is_admin=bool(row.is_admin), has_token=row.token_hash is not None,
                   has_password=row.password_hash is not None, sign_in_epoch=row.sign_in_epoch,
                   created_at=row.created_at, revoked_at=row.revoked_at)
