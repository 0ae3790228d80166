"""Beside a newer Node backend: every column of the run as ``SELECT *`` gives it, and agentEvents.

The tables come from a newer Node backend's DDL (tests/fixtures/node_schema_newer_<dialect>.sql):
runs with the newer columns, one invented column among them, and run_agent_events. Runs on the
env's database (SQLite, or PostgreSQL under ``SENTRI_TEST_DATABASE_URL``); on PostgreSQL the
folded names go back to camelCase for the names Node's adapter knows, and stay folded otherwise.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from sentri.connect_reads import MAX_AGE_S
from sentri.store import RowShape, dialect_of

from .frames import next_data
from .schemas import NEWER
from .sseclient import open_request
from .test_snapshot import RUN_KEYS, run_of

NEWER_RUN_KEYS = RUN_KEYS + [
    "gateResult", "webVitalsResult", "changedPages", "removedPages", "changedFiles", "impactAnalysis",
    "githubCheck", "secretScanBlocked", "tracePaths", "rootCauses", "budgetMinutes", "environmentId",
    "runnerPool", "shardCount", "shardsCompleted", "coverageSummary", "shardCoverageSummaries",
    "changedFileRanges", "prCoverageDiff",
]


@pytest.fixture
def schema():
    return NEWER


def is_postgres(context) -> bool:
    return dialect_of(context.store.database) == "postgres"


def folded(context, key: str) -> str:
    """A column Node's adapter does not know: PostgreSQL sends its folded name."""
    return key.lower() if is_postgres(context) else key


def sql(context, statement: str, *params) -> None:
    """Run SQL written with ``?`` placeholders and unquoted camelCase names, as Node's DDL is."""
    database = context.store.database
    with database.connection_context():
        database.execute_sql(statement.replace("?", database.param), params)


def set_columns(context, run_id: str, **values) -> None:
    """Columns the models do not know, written as the Node backend writes them (JSON as text)."""
    assignments = ", ".join(f"{name} = ?" for name in values)
    sql(context, f"UPDATE runs SET {assignments} WHERE id = ?", *values.values(), run_id)


def add_agent_event(context, run_id, step, agent, phase, message, data, created_at, next_agent=None, model=None):
    sql(context, "INSERT INTO run_agent_events (runId, step, agent, phase, message, data, nextAgent, model, createdAt)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", run_id, step, agent, phase, message, data, next_agent, model,
        created_at)


async def past_snapshot_reuse():
    """A change without an event reaches snapshots once the reuse bound has passed (sentri.connect_reads)."""
    await asyncio.sleep(MAX_AGE_S + 0.1)


async def snapshot_frame(port, world, run_id):
    response = await open_request(port, world.events_path(run_id))
    assert response.status == 200
    return await next_data(response)


@pytest.mark.gen_test
async def test_every_column_of_a_newer_runs_table_is_sent_in_table_order_with_its_json_parsed(port, world, rows,
                                                                                            context):
    rows.run(world.project, id="RUN-7", passed=2, failed=0, total=2, networkCondition="fast3g")
    set_columns(
        context, "RUN-7",
        gateResult='{"passed":true,"rules":["coverage"]}', webVitalsResult='{"lcp":1200.5}',
        changedPages='["/checkout"]', removedPages="", changedFiles="{broken", impactAnalysis=None,
        githubCheck='{"id":5,"conclusion":"success"}', secretScanBlocked=1, tracePaths='["/artifacts/t1.zip"]',
        rootCauses=None, budgetMinutes=30, environmentId="ENV-1", shardCount=4,
        coverageSummary='{"lines":81.5}', shardCoverageSummaries='[{"shard":1,"lines":80}]',
        changedFileRanges='{"src/a.ts":[[1,3]]}', prCoverageDiff="not json",
    )
    frame = await snapshot_frame(port, world, "RUN-7")
    runner_pool = folded(context, "runnerPool")
    expected = (
        '{"type":"snapshot","run":{"id":"RUN-7","projectId":"PRJ-1","type":"test_run","status":"running",'
        '"startedAt":"2026-01-01T00:00:00.000Z","finishedAt":null,"duration":null,"error":null,'
        '"errorCategory":null,"passed":2,"failed":0,"total":2,"pagesFound":null,"parallelWorkers":null,'
        '"tracePath":null,"videoPath":null,"videoSegments":[],"logs":[],"tests":[],"results":[],"testQueue":null,'
        '"generateInput":null,"promptAudit":null,"pipelineStats":null,"feedbackLoop":null,"currentStep":null,'
        '"rateLimitError":null,"qualityAnalytics":null,"deletedAt":null,"workspaceId":"WS-1","pages":[],'
        '"browser":null,"retryCount":0,"failedAfterRetry":0,"networkCondition":"fast3g",'
        '"gateResult":{"passed":true,"rules":["coverage"]},"webVitalsResult":{"lcp":1200.5},'
        '"changedPages":["/checkout"],"removedPages":null,"changedFiles":null,"impactAnalysis":null,'
        '"githubCheck":{"id":5,"conclusion":"success"},"secretScanBlocked":1,"tracePaths":["/artifacts/t1.zip"],'
        '"rootCauses":[],"budgetMinutes":30,"environmentId":"ENV-1",'
        f'"{runner_pool}":"linux-x64",'
        '"shardCount":4,"shardsCompleted":0,"coverageSummary":{"lines":81.5},'
        '"shardCoverageSummaries":[{"shard":1,"lines":80}],"changedFileRanges":{"src/a.ts":[[1,3]]},'
        '"prCoverageDiff":null,"agentEvents":[]}}'
    )
    assert frame == b"data: " + expected.encode("utf-8") + b"\n\n"
    assert list(run_of(frame)) == [folded(context, "runnerPool") if key == "runnerPool" else key
                                   for key in NEWER_RUN_KEYS] + ["agentEvents"]


@pytest.mark.gen_test
@pytest.mark.parametrize("stored, sent", [(None, []), ("", []), ("[oops", []), ('[{"cause":"timeout"}]',
                                                                              [{"cause": "timeout"}])])
async def test_root_causes_default_to_an_empty_list(port, world, rows, context, stored, sent):
    rows.run(world.project, id="RUN-8")
    set_columns(context, "RUN-8", rootCauses=stored)
    assert run_of(await snapshot_frame(port, world, "RUN-8"))["rootCauses"] == sent


@pytest.mark.gen_test
async def test_a_column_added_while_the_server_runs_is_in_the_next_snapshot(port, world, context):
    before = run_of(await snapshot_frame(port, world, "RUN-1"))
    sql(context, "ALTER TABLE runs ADD COLUMN flakeBudget INTEGER DEFAULT 3")
    await past_snapshot_reuse()
    after = run_of(await snapshot_frame(port, world, "RUN-1"))
    assert list(after) == list(before)[:-1] + [folded(context, "flakeBudget"), "agentEvents"]
    assert after[folded(context, "flakeBudget")] == 3


@pytest.mark.gen_test
async def test_the_row_shape_is_computed_once_per_table_shape_not_per_row(port, world, context, monkeypatch):
    computed = []
    original = RowShape.of.__func__

    def counting(cls, columns, *args, **kwargs):
        computed.append(tuple(name for name, _ in columns))
        return original(cls, columns, *args, **kwargs)

    monkeypatch.setattr(RowShape, "of", classmethod(counting))
    for _ in range(3):
        await snapshot_frame(port, world, "RUN-1")
    assert len(computed) == 2  # one for runs, one for run_agent_events
    sql(context, "ALTER TABLE runs ADD COLUMN flakeBudget INTEGER")
    await past_snapshot_reuse()
    for _ in range(2):
        await snapshot_frame(port, world, "RUN-1")
    assert len(computed) == 3  # the new shape of runs, once


@pytest.mark.gen_test
async def test_agent_events_are_the_runs_rows_by_created_at_then_id_every_column_data_parsed(port, world, rows,
                                                                                             context):
    add_agent_event(context, "RUN-1", 2, "triage", "finding", "Checkout fails on step 3", '{"testId":"TC-4"}',
                    "2026-01-01T00:00:02.000Z", model="gpt-x")
    add_agent_event(context, "RUN-1", 1, "planner", "start", "Planning \u2713", "", "2026-01-01T00:00:01.000Z")
    add_agent_event(context, "RUN-2", 1, "other", "start", "another run", None, "2026-01-01T00:00:00.000Z")
    add_agent_event(context, "RUN-1", 2, "triage", "handoff", "To the fixer", "{not json",
                    "2026-01-01T00:00:02.000Z", next_agent="fixer")
    add_agent_event(context, "RUN-1", 3, "fixer", "done", "Fixed", "[1,2]", "2026-01-01T00:00:03.000Z")
    frame = await snapshot_frame(port, world, "RUN-1")
    tail = frame[frame.index(b',"agentEvents":'):]
    assert tail == (
        b',"agentEvents":['
        b'{"id":2,"runId":"RUN-1","step":1,"agent":"planner","phase":"start","message":"Planning \xe2\x9c\x93",'
        b'"data":null,"nextAgent":null,"model":null,"createdAt":"2026-01-01T00:00:01.000Z"},'
        b'{"id":1,"runId":"RUN-1","step":2,"agent":"triage","phase":"finding","message":"Checkout fails on step 3",'
        b'"data":{"testId":"TC-4"},"nextAgent":null,"model":"gpt-x","createdAt":"2026-01-01T00:00:02.000Z"},'
        b'{"id":4,"runId":"RUN-1","step":2,"agent":"triage","phase":"handoff","message":"To the fixer",'
        b'"data":null,"nextAgent":"fixer","model":null,"createdAt":"2026-01-01T00:00:02.000Z"},'
        b'{"id":5,"runId":"RUN-1","step":3,"agent":"fixer","phase":"done","message":"Fixed",'
        b'"data":[1,2],"nextAgent":null,"model":null,"createdAt":"2026-01-01T00:00:03.000Z"}'
        b']}}\n\n'
    )


@pytest.mark.gen_test
async def test_agent_events_take_the_place_of_a_runs_column_of_that_name(port, world, context):
    sql(context, "ALTER TABLE runs ADD COLUMN agentEvents TEXT DEFAULT '[\"stale\"]'")
    sql(context, "ALTER TABLE runs ADD COLUMN flakeBudget INTEGER DEFAULT 3")
    add_agent_event(context, "RUN-1", 1, "planner", "start", "go", None, "2026-01-01T00:00:01.000Z")
    run = run_of(await snapshot_frame(port, world, "RUN-1"))
    assert list(run)[-2:] == ["agentEvents", folded(context, "flakeBudget")]
    assert [event["message"] for event in run["agentEvents"]] == ["go"]


@pytest.mark.gen_test
async def test_a_finished_runs_snapshot_has_its_agent_events_too(port, world, rows, context):
    rows.run(world.project, id="RUN-9", status="completed", passed=1, total=1)
    add_agent_event(context, "RUN-9", 1, "planner", "done", "all good", '{"ok":true}', "2026-01-01T00:00:01.000Z")
    response = await open_request(port, world.events_path("RUN-9"))
    run = run_of(await next_data(response))
    assert [(event["agent"], event["data"]) for event in run["agentEvents"]] == [("planner", {"ok": True})]
    assert json.loads((await next_data(response))[6:]) == {"type": "done", "status": "completed", "passed": 1,
                                                           "total": 1, "testsGenerated": 0}


def test_the_newer_tables_are_left_as_node_created_them(context):
    database = context.store.database
    with database.connection_context():
        columns = [column.name for column in database.get_columns("runs")]
        event_columns = [column.name for column in database.get_columns("run_agent_events")]
    assert columns == [folded(context, key) for key in NEWER_RUN_KEYS]
    assert event_columns == [folded(context, key) for key in (
        "id", "runId", "step", "agent", "phase", "message", "data", "nextAgent", "model", "createdAt")]
    assert context.store.has_agent_events


def test_values_node_postgres_hands_over_as_strings_or_dates_are_sent_so():
    import datetime
    import decimal

    shape = RowShape.of([("id", 25), ("bigcount", 20), ("amount", 1700), ("seenat", 1184), ("day", 1082),
                         ("gateresult", 25)], "postgres", json_objects=("gateResult",))
    moment = datetime.datetime(2026, 1, 1, 1, 2, 3, 456789, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    row = shape.to_json(["RUN-1", 2**40, decimal.Decimal("1.50"), moment, datetime.date(2026, 1, 2), '{"a":1}'])
    assert row == {"id": "RUN-1", "bigcount": str(2**40), "amount": "1.50", "seenat": "2026-01-01T00:02:03.456Z",
                   "day": "2026-01-02", "gateResult": {"a": 1}}


@pytest.mark.parametrize("columns, keys", [
    (["id", "logs", "status"], ["id", "logs", "status"]),  # {...run, logs}: the column's place
    (["id", "status"], ["id", "status", "logs"]),  # no such column: last
])
def test_logs_go_where_javascripts_spread_puts_them(columns, keys):
    from sentri.models import RUN_JSON_LIST_KEYS, RUN_JSON_OBJECT_KEYS
    from sentri.store import with_logs

    shape = RowShape.of([(name, None) for name in columns], "sqlite", RUN_JSON_LIST_KEYS, RUN_JSON_OBJECT_KEYS,
                        legacy_logs=True)
    values = {"id": "RUN-1", "logs": '["legacy"]', "status": "running"}
    run = with_logs(shape.to_json([values[name] for name in columns], ["[t] stored"]), ["[t] stored"])
    assert list(run) == keys
    assert run["logs"] == ["[t] stored"]
