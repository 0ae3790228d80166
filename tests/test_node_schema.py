"""Tables created by the Node backend's own DDL are used as they are, never altered.

Runs on the env's database (SQLite, or PostgreSQL in the tox pg envs). The snapshot's exact
bytes over both schemas are in tests/test_snapshot.py; here, what the tables look like after
the server started on them, and that the column only Node knows reaches the client as Node's
``SELECT *`` gives it: raw, in its table position (PostgreSQL: its folded name).
"""

from __future__ import annotations

import pytest

from sentri.store import dialect_of

from .frames import next_data
from .schemas import NODE
from .sseclient import open_request


@pytest.fixture
def schema():
    return NODE


def run_columns(context):
    database = context.store.database
    with database.connection_context():
        return [column.name for column in database.get_columns("runs")]


def test_the_server_leaves_the_node_tables_as_they_are(context):
    columns = run_columns(context)
    if dialect_of(context.store.database) == "postgres":
        # Unquoted camelCase in Node's DDL: PostgreSQL stored the names folded to lower case.
        assert "projectid" in columns and "cibuildurl" in columns
        assert "projectId" not in columns
    else:
        assert "projectId" in columns and "ciBuildUrl" in columns
    assert not any(column.lower() == "networkcondition" for column in columns)
    assert len(columns) == 35  # 34 columns this project knows, plus ciBuildUrl


@pytest.mark.gen_test
async def test_a_column_only_node_knows_reaches_the_client_raw_in_its_table_position(port, world, context):
    response = await open_request(port, world.events_path())
    assert response.status == 200
    frame = await next_data(response)
    assert frame.startswith(b'data: {"type":"snapshot","run":{"id":"RUN-1","projectId":"PRJ-1",')
    # Not in Node's list of camelCase names: PostgreSQL's folded name is sent, as Node's adapter does.
    key = b"cibuildurl" if dialect_of(context.store.database) == "postgres" else b"ciBuildUrl"
    assert frame.endswith(b',"retryCount":0,"failedAfterRetry":0,"' + key + b'":"https://ci.example.test/build/1"}}\n\n')
    assert b"networkCondition" not in frame  # a column the table lacks never becomes a key
    assert b"agentEvents" not in frame  # no run_agent_events table: the older shape
