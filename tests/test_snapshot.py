"""The snapshot frame (docs/stream.md §7-§8) and the done sent on connect to a finished run.

Every test here writes rows through the ``rows`` fixture, so the same tests run on SQLite and,
under ``SENTRI_TEST_DATABASE_URL``, on PostgreSQL; and each runs twice: on tables this project
created, and on tables created by the Node backend's own DDL (tests/schemas.py: unquoted
camelCase columns, one unknown column, one missing).
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from sentri.signing import verify_signed_path

from .conftest import ARTIFACT_SECRET
from .frames import next_data
from .schemas import BOTH
from .sseclient import open_request

RUN_KEYS = [
    "id", "projectId", "type", "status", "startedAt", "finishedAt", "duration", "error", "errorCategory",
    "passed", "failed", "total", "pagesFound", "parallelWorkers", "tracePath", "videoPath", "videoSegments",
    "logs", "tests", "results", "testQueue", "generateInput", "promptAudit", "pipelineStats", "feedbackLoop",
    "currentStep", "rateLimitError", "qualityAnalytics", "deletedAt", "workspaceId", "pages", "browser",
    "retryCount", "failedAfterRetry", "networkCondition",
]


@pytest.fixture(params=BOTH, ids=str)
def schema(request):
    return request.param


async def first_frame(port, world, run_id):
    response = await open_request(port, world.events_path(run_id))
    assert response.status == 200
    return response, await next_data(response)


def run_of(frame: bytes):
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    event = json.loads(frame[len(b"data: "):-2])
    assert list(event) == ["type", "run"] and event["type"] == "snapshot"
    return event["run"]


@pytest.mark.gen_test
async def test_the_snapshot_of_a_full_run_is_the_row_in_camel_case_table_order_byte_for_byte(port, world, rows,
                                                                                             schema):
    rows.run(
        world.project, id="RUN-7", status="running", finishedAt=None, duration=1234, error="boom \u2713",
        errorCategory="timeout", passed=2, failed=1, total=3, pagesFound=7, parallelWorkers=2,
        videoSegments=[], tests=[{"id": "TC-1", "name": "\u00dcn\u00efcode"}],
        results=[{"testId": "TC-1", "status": "passed", "durationMs": 812}], testQueue=["TC-2"],
        generateInput={"url": "https://shop.example.test", "depth": 2}, promptAudit={"z": 1, "a": [True, None]},
        pipelineStats={"ratio": 0.25}, feedbackLoop={"b": None}, currentStep=4, rateLimitError=None,
        qualityAnalytics={"score": 98}, pages=["/", "/login"], browser="chromium", retryCount=0,
        failedAfterRetry=0, networkCondition="fast3g",
    )
    _, frame = await first_frame(port, world, "RUN-7")
    expected = (
        '{"type":"snapshot","run":{"id":"RUN-7","projectId":"PRJ-1","type":"test_run","status":"running",'
        '"startedAt":"2026-01-01T00:00:00.000Z","finishedAt":null,"duration":1234,"error":"boom \u2713",'
        '"errorCategory":"timeout","passed":2,"failed":1,"total":3,"pagesFound":7,"parallelWorkers":2,'
        '"tracePath":null,"videoPath":null,"videoSegments":[],"logs":[],'
        '"tests":[{"id":"TC-1","name":"\u00dcn\u00efcode"}],'
        '"results":[{"testId":"TC-1","status":"passed","durationMs":812}],"testQueue":["TC-2"],'
        '"generateInput":{"url":"https://shop.example.test","depth":2},"promptAudit":{"z":1,"a":[true,null]},'
        '"pipelineStats":{"ratio":0.25},"feedbackLoop":{"b":null},"currentStep":4,"rateLimitError":null,'
        '"qualityAnalytics":{"score":98},"deletedAt":null,"workspaceId":"WS-1","pages":["/","/login"],'
        '"browser":"chromium","retryCount":0,"failedAfterRetry":0,"networkCondition":"fast3g"}}'
    )
    assert frame == b"data: " + schema.snapshot_json(expected).encode("utf-8") + b"\n\n"
    assert list(run_of(frame)) == schema.run_keys(RUN_KEYS)


@pytest.mark.gen_test
async def test_null_and_empty_json_columns_take_the_spec_defaults(port, world, rows, schema):
    rows.run(world.project, id="RUN-8", videoSegments="", tests="", results=None, pages=None,
             testQueue="", generateInput=None)
    _, frame = await first_frame(port, world, "RUN-8")
    run = run_of(frame)
    assert list(run) == schema.run_keys(RUN_KEYS)
    for key in ("videoSegments", "tests", "results", "pages", "logs"):
        assert run[key] == [], key
    for key in ("testQueue", "generateInput", "promptAudit", "pipelineStats", "feedbackLoop", "qualityAnalytics"):
        assert run[key] is None, key
    for key in ("finishedAt", "duration", "passed", "failed", "total", "tracePath", "videoPath", "error"):
        assert run[key] is None, key


@pytest.mark.gen_test
async def test_json_columns_holding_invalid_json_take_the_defaults_instead_of_failing(port, world, rows):
    broken = "{not json"
    rows.run(world.project, id="RUN-9", videoSegments=broken, tests="[1,", results="\u00ff\u0001", pages="nope",
             logs=broken, testQueue=broken, generateInput="{", promptAudit="]", pipelineStats="'x'",
             feedbackLoop="NaNx", qualityAnalytics="{\"a\":}")
    _, frame = await first_frame(port, world, "RUN-9")
    run = run_of(frame)
    for key in ("videoSegments", "tests", "results", "pages", "logs"):
        assert run[key] == [], key
    for key in ("testQueue", "generateInput", "promptAudit", "pipelineStats", "feedbackLoop", "qualityAnalytics"):
        assert run[key] is None, key


@pytest.mark.gen_test
async def test_logs_come_from_run_logs_in_seq_order(port, world, rows):
    rows.run(world.project, id="RUN-10", logs=["legacy line"])
    rows.log({"id": "RUN-10"}, 3, "[2026-01-01T00:00:03.000Z] third")
    rows.log({"id": "RUN-10"}, 1, "[2026-01-01T00:00:01.000Z] first")
    rows.log({"id": "RUN-10"}, 2, "[2026-01-01T00:00:02.000Z] second \u2713", level="warn")
    rows.log({"id": "RUN-1"}, 1, "another run's line")
    _, frame = await first_frame(port, world, "RUN-10")
    assert run_of(frame)["logs"] == [
        "[2026-01-01T00:00:01.000Z] first",
        "[2026-01-01T00:00:02.000Z] second \u2713",
        "[2026-01-01T00:00:03.000Z] third",
    ]


@pytest.mark.gen_test
async def test_logs_fall_back_to_the_legacy_logs_column_then_to_an_empty_list(port, world, rows):
    rows.run(world.project, id="RUN-11", logs=["[t] old one", "[t] old two"])
    rows.run(world.project, id="RUN-12", logs={"not": "a list"})
    _, frame = await first_frame(port, world, "RUN-11")
    assert run_of(frame)["logs"] == ["[t] old one", "[t] old two"]
    _, frame = await first_frame(port, world, "RUN-12")
    assert run_of(frame)["logs"] == []
    _, frame = await first_frame(port, world, "RUN-1")
    assert run_of(frame)["logs"] == []


def assert_signed(url: str, path: str, before_ms: int) -> None:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == path and list(query) == ["token", "exp"], url
    expires_ms = int(query["exp"][0])
    after_ms = int(time.time() * 1000)
    # exp = now + ARTIFACT_TOKEN_TTL_MS (default one hour), with now taken while serving.
    assert before_ms + 3_600_000 <= expires_ms <= after_ms + 3_600_000
    assert verify_signed_path(ARTIFACT_SECRET, path, query["token"][0], expires_ms, after_ms)


@pytest.mark.gen_test
async def test_every_artifact_path_in_the_snapshot_is_signed_and_the_row_is_not_changed(port, world, rows, context):
    result = {
        "testId": "TC-1", "screenshotPath": "/artifacts/s.png", "videoPath": "/artifacts/v.webm",
        "visualDiff": {"baselinePath": "/artifacts/b.png", "diffPath": "/artifacts/d.png"},
        "stepCaptures": [{"screenshotPath": "/artifacts/c1.png",
                          "visualDiff": {"baselinePath": "/artifacts/c1b.png", "diffPath": "/artifacts/c1d.png"}},
                         {"screenshotPath": None}],
    }
    rows.run(world.project, id="RUN-13", tracePath="/artifacts/trace.zip", videoPath="/artifacts/run.webm",
             videoSegments=["/artifacts/seg1.webm", "/artifacts/seg2.webm"], results=[result, {"testId": "TC-2"}])
    before_ms = int(time.time() * 1000)
    _, frame = await first_frame(port, world, "RUN-13")
    run = run_of(frame)
    assert_signed(run["tracePath"], "/artifacts/trace.zip", before_ms)
    assert_signed(run["videoPath"], "/artifacts/run.webm", before_ms)
    assert_signed(run["videoSegments"][0], "/artifacts/seg1.webm", before_ms)
    assert_signed(run["videoSegments"][1], "/artifacts/seg2.webm", before_ms)
    signed = run["results"][0]
    assert_signed(signed["screenshotPath"], "/artifacts/s.png", before_ms)
    assert_signed(signed["videoPath"], "/artifacts/v.webm", before_ms)
    assert_signed(signed["visualDiff"]["baselinePath"], "/artifacts/b.png", before_ms)
    assert_signed(signed["visualDiff"]["diffPath"], "/artifacts/d.png", before_ms)
    capture = signed["stepCaptures"][0]
    assert_signed(capture["screenshotPath"], "/artifacts/c1.png", before_ms)
    assert_signed(capture["visualDiff"]["baselinePath"], "/artifacts/c1b.png", before_ms)
    assert_signed(capture["visualDiff"]["diffPath"], "/artifacts/c1d.png", before_ms)
    assert signed["stepCaptures"][1] == {"screenshotPath": None}
    assert run["results"][1] == {"testId": "TC-2"}

    from sentri.models import Run

    with context.store.database.connection_context():
        stored = Run.select(Run.tracePath, Run.results).where(Run.id == "RUN-13").tuples().first()
    assert stored[0] == "/artifacts/trace.zip"
    assert json.loads(stored[1]) == [result, {"testId": "TC-2"}]


async def done_on_connect(port, world):
    response = await open_request(port, world.events_path())
    assert response.status == 200
    snapshot = await next_data(response)
    done = await next_data(response)
    assert await response.server_closed()
    assert response.body.endswith(done)  # nothing after the done, and the response ended
    return run_of(snapshot), done


@pytest.mark.gen_test
async def test_a_finished_run_gets_its_snapshot_then_one_done_with_every_counter_then_the_end(port, world, rows,
                                                                                              context):
    rows.run(world.project, id="RUN-20", status="completed", passed=3, failed=1, total=4,
             tests=[{"id": "TC-1"}, {"id": "TC-2"}])
    world.run = {"id": "RUN-20"}
    run, done = await done_on_connect(port, world)
    assert run["status"] == "completed"
    assert done == b'data: {"type":"done","status":"completed","passed":3,"failed":1,"total":4,"testsGenerated":2}\n\n'
    assert context.hub.runs == {}


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "status, counters, tests, expected",
    [
        ("failed", {}, None, b'{"type":"done","status":"failed","testsGenerated":0}'),
        ("aborted", {"passed": 0, "total": 5}, [], b'{"type":"done","status":"aborted","passed":0,"total":5,'
                                                   b'"testsGenerated":0}'),
        ("completed_empty", {"failed": 0}, "[broken", b'{"type":"done","status":"completed_empty","failed":0,'
                                                      b'"testsGenerated":0}'),
        ("interrupted", {"passed": 1, "failed": 2, "total": 3}, [1, 2, 3],
         b'{"type":"done","status":"interrupted","passed":1,"failed":2,"total":3,"testsGenerated":3}'),
    ],
)
async def test_the_done_on_connect_leaves_out_null_counters_and_counts_tests(port, world, rows, status, counters,
                                                                             tests, expected):
    values = dict(counters)
    if tests is not None:
        values["tests"] = tests
    rows.run(world.project, id="RUN-21", status=status, **values)
    world.run = {"id": "RUN-21"}
    _, done = await done_on_connect(port, world)
    assert done == b"data: " + expected + b"\n\n"
