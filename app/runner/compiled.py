"""Statements of the hot paths (step commits, claims, polls, listings), compiled once, run on the driver.

SQLAlchemy's per-execution work (cache key, execution context, result wrapping, parameter
assembly) cost 20-40 us a statement, several times what SQLite itself spends on these small
indexed statements, and a step commit runs several of them. Here SQLAlchemy still writes the SQL
for the engine's dialect, converts every value with the column types' own processors, and owns
the transaction (BEGIN IMMEDIATE, commit, rollback); only the per-execution layer is skipped.
"""
from operator import itemgetter
from typing import Any, Optional

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql import Executable


class CompiledStatement:
    def __init__(self, statement: Executable, dialect: Dialect, column_keys: Optional[list[str]] = None):
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        if any(bind.required and bind.key != name for bind, name in compiled.bind_names.items()):
            raise ValueError(f"bind parameters renamed in compilation are not supported: {compiled}")
        self.sql = str(compiled)
        order = compiled.positiontup if compiled.positional else None
        # The driver's parameters from a dict of them: a tuple in bind order, or the dict itself.
        if order is None:
            self.arguments = lambda values: values
        elif not order:
            self.arguments = lambda values: ()
        elif len(order) == 1:
            self.arguments = lambda values, key=order[0]: (values[key],)
        else:
            self.arguments = itemgetter(*order)
        # The statement's own values (the 1 of `version + 1`), which a call never passes.
        self.defaults = {name: bind.effective_value for bind, name in compiled.bind_names.items()
                         if not bind.required}
        self.bind_processors = [(name, processor) for name, processor in
                                ((name, bind.type.dialect_impl(dialect).bind_processor(dialect))
                                 for bind, name in compiled.bind_names.items()) if processor is not None]
        self.dialect = dialect
        self.columns = list(statement.selected_columns) if getattr(statement, "is_select", False) else []
        self.keys = [column.key for column in self.columns]
        # Made at the first execution: a type's result processor may depend on the driver's type code
        # of the column (PostgreSQL's Float converts numeric results but passes float8 through).
        self.result_processors: Optional[list] = None

    def execute(self, conn: Connection, params: dict[str, Any]):
        """Run on the connection's own DB-API connection, inside its current transaction; returns the cursor."""
        return self.run(conn.connection.dbapi_connection, params)

    def run(self, dbapi_connection, params: dict[str, Any]):
        """Run on a DB-API connection (e.g. a pool's raw_connection()); returns the cursor, rows unconverted.

        `params` must name every bind parameter the statement has no value for: a missing one is a KeyError.
        """
        values = self.defaults | params
        for name, process in self.bind_processors:
            values[name] = process(values[name])
        cursor = dbapi_connection.cursor()
        cursor.execute(self.sql, self.arguments(values))
        if self.result_processors is None and self.columns and cursor.description:
            self.result_processors = self._result_processors(cursor.description)
        return cursor

    def _result_processors(self, description) -> list:
        made = ((column.key, column.type.dialect_impl(self.dialect).result_processor(self.dialect, field[1]))
                for column, field in zip(self.columns, description))
        return [(key, processor) for key, processor in made if processor is not None]

    def read(self, engine: Engine, params: dict[str, Any]) -> list[tuple]:
        """The driver's rows, unconverted, read on a raw pool connection outside any transaction.

        For the hottest reads (the status poll, listings): no Connection object is built for them.
        """
        conn = engine.raw_connection()
        try:
            cursor = self.run(conn, params)
            rows = cursor.fetchall()
            cursor.close()
        finally:
            conn.close()
        return rows

    def first(self, conn: Connection, params: dict[str, Any]) -> Optional[dict[str, Any]]:
        row = self.execute(conn, params).fetchone()
        return self.mapping(row) if row is not None else None

    def all(self, conn: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.mapping(row) for row in self.execute(conn, params).fetchall()]

    def mapping(self, row) -> dict[str, Any]:
        """A driver row as {column key: value converted by the column's type}."""
        mapping = dict(zip(self.keys, row))
        for key, process in self.result_processors or ():
            mapping[key] = process(mapping[key])
        return mapping

    def scalars(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        values = [row[0] for row in self.execute(conn, params).fetchall()]
        process = dict(self.result_processors or ()).get(self.keys[0])
        return [process(value) for value in values] if process else values

    def rowcount(self, conn: Connection, params: dict[str, Any]) -> int:
        return self.execute(conn, params).rowcount
