"""Which runs a caller may stream (docs/stream.md §2): exact 404 bodies, nothing left behind."""

from __future__ import annotations

import pytest

from .conftest import token_for
from .sseclient import open_request

NOT_FOUND = b'{"error":"not found"}'
PROJECT_NOT_FOUND = b'{"error":"project not found"}'


async def refused(port, path):
    response = await open_request(port, path)
    await response.read_json()
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    return response.status, response.body


@pytest.mark.gen_test
async def test_an_unknown_run_is_404_not_found(port, world, context):
    assert await refused(port, world.events_path("RUN-999")) == (404, NOT_FOUND)
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_soft_deleted_run_is_404_not_found(port, world, rows, context):
    rows.run(world.project, id="RUN-2", deletedAt="2026-01-02T00:00:00.000Z")
    assert await refused(port, world.events_path("RUN-2")) == (404, NOT_FOUND)
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_run_of_another_workspace_is_404_project_not_found(port, world, rows, context):
    stranger = rows.user(id="USR-2")
    their_workspace = rows.workspace(stranger, id="WS-2")
    their_project = rows.project(their_workspace, id="PRJ-2")
    rows.run(their_project, id="RUN-2")
    assert await refused(port, world.events_path("RUN-2")) == (404, PROJECT_NOT_FOUND)
    # The owner of that workspace streams it; ours is as invisible to them.
    their_token = token_for(stranger, "WS-2")
    ok = await open_request(port, world.events_path("RUN-2", their_token))
    assert ok.status == 200
    assert await refused(port, world.events_path("RUN-1", their_token)) == (404, PROJECT_NOT_FOUND)


@pytest.mark.gen_test
async def test_a_run_whose_project_is_soft_deleted_or_missing_is_404_project_not_found(port, world, rows, context):
    deleted = rows.project(world.workspace, id="PRJ-gone", deletedAt="2026-01-02T00:00:00.000Z")
    rows.run(deleted, id="RUN-2")
    rows.run({"id": "PRJ-never", "workspaceId": "WS-1"}, id="RUN-3")
    assert await refused(port, world.events_path("RUN-2")) == (404, PROJECT_NOT_FOUND)
    assert await refused(port, world.events_path("RUN-3")) == (404, PROJECT_NOT_FOUND)
    assert context.hub.runs == {}


@pytest.mark.gen_test
async def test_a_soft_deleted_run_is_not_found_even_when_its_project_is_gone_too(port, world, rows):
    deleted = rows.project(world.workspace, id="PRJ-gone", deletedAt="2026-01-02T00:00:00.000Z")
    rows.run(deleted, id="RUN-2", deletedAt="2026-01-02T00:00:00.000Z")
    assert await refused(port, world.events_path("RUN-2")) == (404, NOT_FOUND)


@pytest.mark.gen_test
async def test_authentication_is_checked_before_the_run_is_looked_up(port, world):
    assert await refused(port, "/api/v1/runs/RUN-999/events") == (401, b'{"error":"Authentication required."}')
