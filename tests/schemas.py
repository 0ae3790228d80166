"""Who created the tables: this project (``ensure_schema``) or the Node backend's own DDL.

A deployment beside the Node backend reads tables Node created, which differ from ours:
unquoted camelCase columns (folded to lower case by PostgreSQL), a column this project does
not know, and, on an older database, a column missing. ``NODE`` applies that DDL
(tests/fixtures/node_schema_<dialect>.sql) to the empty test database before the server
starts, so ``ensure_schema`` finds the tables there and must leave them alone.

The ``schema`` fixture (tests/conftest.py) is ``PROJECT`` unless a test module overrides it;
tests/test_snapshot.py runs over both.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from sentri.store import column_key

from . import pg

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The dialect tests/conftest.py's database uses.
DIALECT = "postgres" if os.environ.get("SENTRI_TEST_DATABASE_URL") else "sqlite"


@dataclass(frozen=True)
class Schema:
    name: str
    # The DDL file's stem (node_schema -> node_schema_sqlite.sql / node_schema_postgres.sql);
    # None: the server creates the tables itself.
    ddl: Optional[str] = None
    # Columns the Node DDL lacks, per table (camelCase); rows leave them out.
    missing_columns: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    # Columns only the Node DDL has, per table, last in the table, with their DDL default: the
    # snapshot passes them through raw, in their table position (Node's SELECT *).
    unknown_columns: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __str__(self) -> str:  # the test id: test_x[node]
        return self.name

    def ddl_text(self, database_url: str) -> str:
        dialect = "postgres" if database_url.startswith(("postgres:", "postgresql:")) else "sqlite"
        return (FIXTURES / f"{self.ddl}_{dialect}.sql").read_text(encoding="utf-8")

    def apply(self, database_url: str) -> None:
        """Create the tables the way this schema's author does, on an empty database."""
        if self.ddl is None:
            return
        script = self.ddl_text(database_url)
        if database_url.startswith(("postgres:", "postgresql:")):
            pg.execute(database_url, script)
            return
        connection = sqlite3.connect(sqlite_path(database_url))
        try:
            connection.executescript(script)
        finally:
            connection.close()

    def has_column(self, table: str, column: str) -> bool:
        return column not in self.missing_columns.get(table, ())

    def present(self, table: str, values: Dict[str, Any]) -> Dict[str, Any]:
        """``values`` without the columns this schema's ``table`` lacks."""
        return {key: value for key, value in values.items() if self.has_column(table, key)}

    def unknown(self, table: str) -> Dict[str, Any]:
        """The unknown columns' keys as the snapshot sends them (PostgreSQL: folded) and values."""
        return {column_key(name.lower() if DIALECT == "postgres" else name, DIALECT): value
                for name, value in self.unknown_columns.get(table, {}).items()}

    def run_keys(self, keys: List[str]) -> List[str]:
        """The snapshot's run keys under this schema: missing columns are not sent, unknown ones are."""
        return [key for key in keys if self.has_column("runs", key)] + list(self.unknown("runs"))

    def snapshot_json(self, expected: str) -> str:
        """An expected snapshot frame's JSON (written for the project's schema) under this schema."""
        event = json.loads(expected)
        event["run"] = {**self.present("runs", event["run"]), **self.unknown("runs")}
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def sqlite_path(database_url: str) -> str:
    path = unquote(urlsplit(database_url).path)
    return path[1:] if path.startswith("/") else path


PROJECT = Schema("sentri")
NODE = Schema(
    "node",
    ddl="node_schema",
    missing_columns={"runs": ("networkCondition",)},
    unknown_columns={"runs": {"ciBuildUrl": "https://ci.example.test/build/1"}},
)
# A newer Node backend's tables: runs with its newer columns and one invented among them
# (runnerPool), and run_agent_events (tests/test_dropin_schema.py writes its expected bytes).
NEWER = Schema("node_newer", ddl="node_schema_newer")
BOTH = (PROJECT, NODE)
