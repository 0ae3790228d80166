"""The tables the Node backend created (docs/database.md §3), as peewee models, and their DDL.

Field names are the camelCase keys the Node API sends, on purpose: a run's field names are
its JSON keys. Column names are the same words in lower case: PostgreSQL folds the Node
backend's unquoted camelCase columns to lower case (``projectid``), and SQLite matches
column names case-insensitively, so one set of models reads tables created by either side.

Tables are created with the Node backend's own style of DDL (unquoted camelCase), not with
peewee's ``create_table``: peewee would quote the names, and a quoted ``"projectId"`` on
PostgreSQL is a different column from the Node backend's ``projectid``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import peewee

database_proxy = peewee.DatabaseProxy()


def text(camel: str) -> peewee.TextField:
    return peewee.TextField(column_name=camel.lower(), null=True)


def integer(camel: str) -> peewee.IntegerField:
    return peewee.IntegerField(column_name=camel.lower(), null=True)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy


class Workspace(BaseModel):
    id = peewee.TextField(primary_key=True)
    name = text("name")
    slug = text("slug")
    ownerId = text("ownerId")
    createdAt = text("createdAt")
    updatedAt = text("updatedAt")

    class Meta:
        table_name = "workspaces"


class WorkspaceMember(BaseModel):
    id = peewee.TextField(primary_key=True)
    workspaceId = text("workspaceId")
    userId = text("userId")
    role = text("role")
    joinedAt = text("joinedAt")

    class Meta:
        table_name = "workspace_members"


class User(BaseModel):
    id = peewee.TextField(primary_key=True)
    name = text("name")
    email = text("email")
    passwordHash = text("passwordHash")
    role = text("role")
    avatar = text("avatar")
    createdAt = text("createdAt")
    updatedAt = text("updatedAt")
    emailVerified = integer("emailVerified")

    class Meta:
        table_name = "users"


class Project(BaseModel):
    id = peewee.TextField(primary_key=True)
    name = text("name")
    url = text("url")
    credentials = text("credentials")
    status = text("status")
    createdAt = text("createdAt")
    deletedAt = text("deletedAt")
    workspaceId = text("workspaceId")

    class Meta:
        table_name = "projects"


class Run(BaseModel):
    id = peewee.TextField(primary_key=True)
    projectId = text("projectId")
    type = text("type")
    status = text("status")
    startedAt = text("startedAt")
    finishedAt = text("finishedAt")
    duration = integer("duration")
    error = text("error")
    errorCategory = text("errorCategory")
    passed = integer("passed")
    failed = integer("failed")
    total = integer("total")
    pagesFound = integer("pagesFound")
    parallelWorkers = integer("parallelWorkers")
    tracePath = text("tracePath")
    videoPath = text("videoPath")
    videoSegments = text("videoSegments")
    logs = text("logs")
    tests = text("tests")
    results = text("results")
    testQueue = text("testQueue")
    generateInput = text("generateInput")
    promptAudit = text("promptAudit")
    pipelineStats = text("pipelineStats")
    feedbackLoop = text("feedbackLoop")
    currentStep = integer("currentStep")
    rateLimitError = text("rateLimitError")
    qualityAnalytics = text("qualityAnalytics")
    deletedAt = text("deletedAt")
    workspaceId = text("workspaceId")
    pages = text("pages")
    browser = text("browser")
    retryCount = integer("retryCount")
    failedAfterRetry = integer("failedAfterRetry")
    networkCondition = text("networkCondition")

    class Meta:
        table_name = "runs"


class RunLog(BaseModel):
    id = peewee.AutoField()
    runId = text("runId")
    seq = integer("seq")
    level = text("level")
    message = text("message")
    createdAt = text("createdAt")

    class Meta:
        table_name = "run_logs"


class RunAgentEvent(BaseModel):
    """A newer Node backend's narrative of a run's agents (one row per step and phase).

    Not in ``MODELS``: this project never creates the table. Where it exists (the newer
    backend created it), agent events are stored there and snapshots carry ``agentEvents``;
    where it does not, snapshots keep the older shape.
    """

    id = peewee.AutoField()
    runId = text("runId")
    step = integer("step")
    agent = text("agent")
    phase = text("phase")
    message = text("message")
    data = text("data")
    nextAgent = text("nextAgent")
    model = text("model")
    createdAt = text("createdAt")

    class Meta:
        table_name = "run_agent_events"


MODELS = (Workspace, WorkspaceMember, User, Project, Run, RunLog)
AGENT_EVENTS_TABLE = RunAgentEvent._meta.table_name
AGENT_PHASES = ("start", "progress", "finding", "handoff", "done")
# An agent_event frame's fields after ``type``, in the newer Node backend's order.
AGENT_EVENT_FRAME_FIELDS = ("step", "agent", "phase", "message", "data", "nextAgent", "model", "createdAt")

# JSON text columns of a run (docs/stream.md §7): the list ones read as [] when empty or unreadable,
# the others as null. Besides those, the ones a newer Node backend parses (each only
# when the table has it: a column the table lacks never becomes a key).
RUN_JSON_LIST_KEYS = ("tests", "results", "videoSegments", "pages", "rootCauses")
RUN_JSON_OBJECT_KEYS = (
    "testQueue",
    "generateInput",
    "promptAudit",
    "pipelineStats",
    "feedbackLoop",
    "qualityAnalytics",
    "gateResult",
    "webVitalsResult",
    "changedPages",
    "removedPages",
    "changedFiles",
    "impactAnalysis",
    "githubCheck",
    "tracePaths",
    "coverageSummary",
    "shardCoverageSummaries",
    "changedFileRanges",
    "prCoverageDiff",
)

# PostgreSQL folds the Node backend's unquoted camelCase column names to lower case. As the
# Node PostgreSQL adapter does, a folded name in this list is sent in its camelCase form; any
# other name is sent as the database gives it.
KNOWN_CAMEL_NAMES = tuple(sorted(
    {field.name for model in (*MODELS, RunAgentEvent) for field in model._meta.sorted_fields}
    | set(RUN_JSON_LIST_KEYS) | set(RUN_JSON_OBJECT_KEYS)
    | {"secretScanBlocked", "budgetMinutes", "environmentId", "shardCount", "shardsCompleted", "agentEvents"}
))
CAMEL_BY_FOLDED = {name.lower(): name for name in KNOWN_CAMEL_NAMES if name != name.lower()}


def _ddl_type(field: peewee.Field, dialect: str) -> str:
    if isinstance(field, peewee.AutoField):
        return "SERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    kind = "INTEGER" if isinstance(field, peewee.IntegerField) else "TEXT"
    return f"{kind} PRIMARY KEY" if field.primary_key else kind


def create_table_statements(dialect: str) -> Dict[str, List[str]]:
    """Per table, the statements that create it as the Node backend does (unquoted camelCase)."""
    extra: Dict[str, Tuple[str, ...]] = {
        "workspaces": ("UNIQUE (slug)",),
        "workspace_members": ("UNIQUE (workspaceId, userId)",),
        "users": ("UNIQUE (email)",),
    }
    statements: Dict[str, List[str]] = {}
    for model in MODELS:
        table = model._meta.table_name
        columns = [f"{field.name} {_ddl_type(field, dialect)}" for field in model._meta.sorted_fields]
        body = ",\n  ".join(columns + list(extra.get(table, ())))
        statements[table] = [f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}\n)"]
    statements["run_logs"].append("CREATE INDEX IF NOT EXISTS idx_run_logs_run_seq ON run_logs (runId, seq)")
    statements["projects"].append("CREATE INDEX IF NOT EXISTS idx_projects_workspace ON projects (workspaceId)")
    statements["workspace_members"].append(
        "CREATE INDEX IF NOT EXISTS idx_workspace_members_user ON workspace_members (userId)"
    )
    return statements
