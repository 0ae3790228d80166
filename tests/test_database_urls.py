"""Which database a DATABASE_URL opens, a JSON column already decoded by its driver, and a
store over a database that has no pool to empty."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import peewee
import pytest

from sentri.config import SettingsError
from sentri.signing import ArtifactSigner
from sentri.store import Store, decode_json_column, open_database


def test_an_in_memory_sqlite_url_opens_without_a_folder_check():
    database = open_database("sqlite:///:memory:", "/nonexistent-data-dir", 2)
    try:
        assert database.database == ":memory:"
        with database.connection_context():
            assert database.execute_sql("select 1").fetchone() == (1,)
    finally:
        database.close_all()  # type: ignore[attr-defined]


def test_a_postgres_url_without_the_driver_installed_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # what `import psycopg2` sees when it is not installed
    with pytest.raises(SettingsError) as error:
        open_database("postgres://user@127.0.0.1:5432/test", "/tmp", 2)
    assert str(error.value) == (
        "DATABASE_URL is PostgreSQL but psycopg2 is not installed (pip install 'sentri-live[postgres]')")


def test_a_json_column_the_driver_already_decoded_is_used_as_it_is():
    steps = [{"step": 1}]
    assert decode_json_column(steps, []) is steps
    assert decode_json_column('[{"step":1}]', []) == steps
    assert decode_json_column(None, []) == [] and decode_json_column("", {}) == {}


def test_closing_a_store_over_a_database_without_a_pool_stops_its_threads():
    database = peewee.SqliteDatabase(":memory:")
    store = Store(database, ArtifactSigner("s", 1000), workers=1)
    executor: ThreadPoolExecutor = store.executor
    store.close()
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)
