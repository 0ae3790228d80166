"""A private PostgreSQL database per test session on a server the env names."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

TABLES = ("run_agent_events", "run_logs", "runs", "projects", "workspace_members", "workspaces", "users")


def _connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg2

    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


@contextlib.contextmanager
def temporary_database(server_url: str) -> Iterator[str]:
    name = f"sentri_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _connect(server_url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        parts = urlsplit(server_url)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def drop_tables(url: str) -> None:
    connection = _connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS " + ", ".join(TABLES) + " CASCADE")
    finally:
        connection.close()


def drop_database(server_url: str, database_url: str) -> None:
    """Drop the database ``database_url`` names, cutting its open connections (a database gone)."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = _connect(server_url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def execute(url: str, script: str) -> None:
    """Run a script of SQL statements (a DDL file) on the database ``url`` names."""
    connection = _connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(script)
    finally:
        connection.close()


def server_url() -> str:
    """The PostgreSQL server tests that need PostgreSQL use, whatever the env's backend."""
    return (
        os.environ.get("SENTRI_TEST_POSTGRES_SERVER")
        or os.environ.get("SENTRI_TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def connection_count(server: str, database_url: str) -> int:
    """Connections the server has open to the database ``database_url`` names."""
    name = urlsplit(database_url).path.lstrip("/")
    connection = _connect(server)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()
