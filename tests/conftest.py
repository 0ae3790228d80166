"""Shared fixtures: a real server on a free port, a real database, rows and tokens.

The database is SQLite in a temporary folder unless ``SENTRI_TEST_DATABASE_URL`` names a
PostgreSQL server (the tox ``pg`` envs), in which case each test session creates its own
database there and every test starts from empty tables.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, Optional

import pytest
import tornado.web

from sentri.accept import HTTPServer
from sentri.app import build_context, make_app
from sentri.config import Settings
from sentri.context import Context
from sentri.models import MODELS, Project, Run, RunLog, User, Workspace, WorkspaceMember
from sentri.tokens import mint
from sentri.writes import iso_now

from . import pg, schemas, sseclient
from .access_lines import access_lines  # noqa: F401  (fixture: the access lines a test wrote)
from .crash_log import write_crash_stacks_to_the_crash_log
from .logcheck import expect_log, fail_on_unexpected_logs  # noqa: F401  (fixtures: a WARNING+ line fails a test)
from .logsweep import remember_secret, session_log_dir, sweep_session_logs_for_secrets  # noqa: F401  (docs/settings.md §4 sweep)
from .markers import add_markers, pytest_collection_modifyitems  # noqa: F401  (the redis marker)

JWT_SECRET = "test-jwt-secret-0123456789abcdef"
ARTIFACT_SECRET = "test-artifact-secret"
remember_secret(JWT_SECRET)
remember_secret(ARTIFACT_SECRET)


@pytest.hookimpl(trylast=True)  # trylast: the crash log replaces pytest's faulthandler on stderr
def pytest_configure(config: Any) -> None:
    add_markers(config)
    write_crash_stacks_to_the_crash_log(config)


@pytest.fixture(autouse=True)
def close_test_connections(io_loop: Any) -> Iterator[None]:
    yield
    io_loop.run_sync(sseclient.close_all)


@pytest.fixture(scope="session")
def database_url_for_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Optional[str]]:
    """A PostgreSQL database for the whole session when the env asks for one, else None."""
    server = os.environ.get("SENTRI_TEST_DATABASE_URL", "")
    if not server:
        yield None
        return
    with pg.temporary_database(server) as url:
        yield url


@pytest.fixture
def schema() -> schemas.Schema:
    """Who creates the tables; a module overrides it to run over the Node backend's DDL too."""
    return schemas.PROJECT


@pytest.fixture
def database_url(database_url_for_session: Optional[str], tmp_path: Any, schema: schemas.Schema) -> str:
    if database_url_for_session is None:
        url = f"sqlite:///{tmp_path}/sentri.db"
    else:
        pg.drop_tables(database_url_for_session)
        url = database_url_for_session
    schema.apply(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    return Settings(
        {
            "jwt_secret": JWT_SECRET,
            "artifact_secret": ARTIFACT_SECRET,
            "database_url": database_url,
            "data_dir": str(tmp_path),
            "port": 0,
            "db_workers": 2,
        }
    )


@pytest.fixture
def context(settings: Settings, io_loop: Any) -> Iterator[Context]:
    context = build_context(settings)
    context.hub.start()
    io_loop.run_sync(context.bus.start)
    yield context
    close_context(context, io_loop)


def close_context(context: Context, io_loop: Any) -> None:
    """Everything a test's context opened: streams, the relay, history's and revocations' Redis
    clients (left open, their connections are garbage-collected in a later test, which fails on
    the ResourceWarning), the database."""
    context.hub.stop()

    def close_streams() -> None:  # on the loop: closing unregisters the socket from it
        for stream in list(context.hub.streams()):
            stream.close("test_teardown")

    io_loop.run_sync(close_streams)
    io_loop.run_sync(context.bus.close)
    io_loop.run_sync(context.hub.history.close)
    io_loop.run_sync(context.revocations.close)
    context.store.close()


@pytest.fixture
def app(context: Context) -> tornado.web.Application:
    return make_app(context)


@pytest.fixture
def http_server(request: pytest.FixtureRequest, io_loop: Any, _unused_port: Any) -> Any:
    """pytest-tornado's fixture of that name, with the server class ``sentri serve`` runs
    (sentri.accept: its accept loop and publish connections), not Tornado's plain one."""
    server = HTTPServer(request.getfixturevalue("app"))
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def port(http_server: Any, http_port: int) -> int:
    return http_port


class Rows:
    """Creates the rows a test needs, with Node-like ids, directly in the test database."""

    def __init__(self, context: Context, schema: schemas.Schema = schemas.PROJECT) -> None:
        self.database = context.store.database
        self.schema = schema
        self.counter = 0

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def _insert(self, model: Any, **values: Any) -> Dict[str, Any]:
        # The Node schema may lack a column on purpose (tests/schemas.py): the row goes without it.
        present = self.schema.present(model._meta.table_name, values)
        with self.database.connection_context():
            model.insert(**present).execute()
        return values

    def user(self, **values: Any) -> Dict[str, Any]:
        user_id = values.pop("id", None) or self._id("USR")
        defaults = {"name": "Ada", "email": f"{user_id.lower()}@example.test", "role": "user",
                    "createdAt": iso_now(), "passwordHash": "x"}
        return self._insert(User, id=user_id, **{**defaults, **values})

    def workspace(self, owner: Dict[str, Any], **values: Any) -> Dict[str, Any]:
        ws_id = values.pop("id", None) or self._id("WS")
        defaults = {"name": ws_id, "slug": ws_id.lower(), "ownerId": owner["id"], "createdAt": iso_now()}
        workspace = self._insert(Workspace, id=ws_id, **{**defaults, **values})
        self.member(workspace, owner, role="admin")
        return workspace

    def member(self, workspace: Dict[str, Any], user: Dict[str, Any], role: str = "viewer",
               joinedAt: Optional[str] = None) -> Dict[str, Any]:
        return self._insert(WorkspaceMember, id=self._id("WM"), workspaceId=workspace["id"], userId=user["id"],
                            role=role, joinedAt=joinedAt or iso_now())

    def project(self, workspace: Dict[str, Any], **values: Any) -> Dict[str, Any]:
        project_id = values.pop("id", None) or self._id("PRJ")
        defaults = {"name": "Shop", "url": "https://shop.example.test", "status": "active",
                    "createdAt": iso_now(), "workspaceId": workspace["id"]}
        return self._insert(Project, id=project_id, **{**defaults, **values})

    def run(self, project: Dict[str, Any], **values: Any) -> Dict[str, Any]:
        run_id = values.pop("id", None) or self._id("RUN")
        for key, value in list(values.items()):
            if isinstance(value, (list, dict)):
                values[key] = json.dumps(value)
        defaults = {"projectId": project["id"], "type": "test_run", "status": "running",
                    "startedAt": "2026-01-01T00:00:00.000Z", "workspaceId": project["workspaceId"]}
        return self._insert(Run, id=run_id, **{**defaults, **values})

    def log(self, run: Dict[str, Any], seq: int, message: str, level: str = "info") -> None:
        self._insert(RunLog, runId=run["id"], seq=seq, level=level, message=message, createdAt=iso_now())


@pytest.fixture
def rows(context: Context, schema: schemas.Schema) -> Rows:
    return Rows(context, schema)


class World:
    """One user, member of one workspace with one project and one running run: the common case."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self.user = rows.user(id="USR-1", email="ada@example.test", name="Ada", role="admin")
        self.workspace = rows.workspace(self.user, id="WS-1")
        self.project = rows.project(self.workspace, id="PRJ-1")
        self.run = rows.run(self.project, id="RUN-1")
        self.token = token_for(self.user, self.workspace["id"])

    def events_path(self, run_id: Optional[str] = None, token: Optional[str] = None) -> str:
        return f"/api/v1/runs/{run_id or self.run['id']}/events?token={token or self.token}"


@pytest.fixture
def world(rows: Rows) -> World:
    return World(rows)


def token_for(user: Dict[str, Any], workspace_id: Optional[str] = None, secret: str = JWT_SECRET,
              lifetime_s: int = 3600, now: Optional[float] = None) -> str:
    return remember_secret(mint(secret, user, workspace_id, lifetime_s=lifetime_s, now=now))


__all__ = ["MODELS", "Rows", "World", "token_for"]
