"""``sentri demo``: a workspace, a user, a project and simulated runs on the embedded SQLite.

Each simulated run looks like a real Sentri test run: it writes log lines (stored in
``run_logs`` first, so a snapshot taken later holds them), test results with artifact
paths, a screenshot event, and a final ``done``; then the next run starts.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

from .context import Context
from .models import Project, Run, User, Workspace, WorkspaceMember
from .store import tuples
from .writes import append_log, finish_run, iso_now, log_message, update_run

DEMO_USER = {"id": "USR-demo", "name": "Demo User", "email": "demo@sentri.local", "role": "admin"}
DEMO_WORKSPACE_ID = "WS-demo"
DEMO_PROJECT_ID = "PRJ-demo"

PAGES = ["/", "/login", "/pricing", "/docs", "/checkout", "/account", "/search", "/blog"]
STEPS = [
    "navigating to {url}{page}",
    "waiting for network idle on {page}",
    "clicking primary call-to-action on {page}",
    "asserting heading is visible on {page}",
    "filling form fields on {page}",
    "capturing screenshot of {page}",
]


def seed_demo_sync() -> None:
    """Create the demo workspace, user and project once (idempotent)."""
    now = iso_now()
    User.insert(id=DEMO_USER["id"], name=DEMO_USER["name"], email=DEMO_USER["email"], role=DEMO_USER["role"],
                passwordHash="", createdAt=now, updatedAt=now, emailVerified=1).on_conflict_ignore().execute()
    Workspace.insert(id=DEMO_WORKSPACE_ID, name="Demo", slug="demo", ownerId=DEMO_USER["id"], createdAt=now,
                     updatedAt=now).on_conflict_ignore().execute()
    WorkspaceMember.insert(id="WM-demo", workspaceId=DEMO_WORKSPACE_ID, userId=DEMO_USER["id"], role="admin",
                           joinedAt=now).on_conflict_ignore().execute()
    Project.insert(id=DEMO_PROJECT_ID, name="Demo shop", url="https://shop.example.test", status="active",
                   createdAt=now, workspaceId=DEMO_WORKSPACE_ID).on_conflict_ignore().execute()
    # A previous demo that was stopped mid-run leaves a run "running" forever: mark it.
    Run.update(status="interrupted", finishedAt=now).where(
        (Run.projectId == DEMO_PROJECT_ID) & (Run.status == "running")
    ).execute()


def next_run_id_sync() -> str:
    ids = [str(run_id) for (run_id,) in tuples(Run.select(Run.id).where(Run.projectId == DEMO_PROJECT_ID))]
    numbers = [int(run_id.rsplit("-", 1)[1]) for run_id in ids if run_id.rsplit("-", 1)[1].isdigit()]
    return f"RUN-{max(numbers, default=0) + 1}"


def create_run_sync(run_id: str, tests: List[Dict[str, Any]]) -> None:
    Run.insert(id=run_id, projectId=DEMO_PROJECT_ID, type="test_run", status="running", startedAt=iso_now(),
               total=len(tests), tests="[]", results="[]", logs="[]", parallelWorkers=2, browser="chromium",
               workspaceId=DEMO_WORKSPACE_ID, retryCount=0).execute()
    update_run(run_id, {"tests": tests})


class DemoRun:
    """Drives one simulated run, publishing through ``emit`` and storing through the store."""

    def __init__(self, context: Context, run_id: str, step_s: float, rng: random.Random) -> None:
        self.context = context
        self.run_id = run_id
        self.step_s = step_s
        self.rng = rng
        self.tests = [{"id": f"TC-{n}", "name": f"{page} renders and responds", "page": page}
                      for n, page in enumerate(rng.sample(PAGES, 5), start=1)]
        self.results: List[Dict[str, Any]] = []

    async def log(self, text: str, level: str = "info") -> None:
        message = log_message(text)
        await self.context.store.run(lambda: append_log(self.run_id, message, level))
        self.context.hub.emit(self.run_id, "log", {"message": message})

    async def create(self) -> None:
        await self.context.store.run(lambda: create_run_sync(self.run_id, self.tests))

    async def play(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Dict[str, Any]:
        await self.log(f"Run {self.run_id} started: {len(self.tests)} tests on chromium, 2 workers")
        for test in self.tests:
            await sleep(self.step_s)
            await self.log(f"▶ {test['id']} {test['name']}")
            for step in self.rng.sample(STEPS, 3):
                await sleep(self.step_s)
                await self.log("  " + step.format(url="https://shop.example.test", page=test["page"]))
            await self.record_result(test)
        passed = sum(1 for result in self.results if result["status"] == "passed")
        done = {"status": "completed", "passed": passed, "failed": len(self.results) - passed,
                "total": len(self.tests), "testsGenerated": len(self.tests)}
        await self.log(f"Run finished: {passed} passed, {len(self.results) - passed} failed")
        await self.context.store.run(lambda: finish_run(self.run_id, done))
        self.context.hub.emit(self.run_id, "done", done)
        return done

    async def record_result(self, test: Dict[str, Any]) -> None:
        status = "failed" if self.rng.random() < 0.2 else "passed"
        shot = f"/artifacts/screenshots/{self.run_id}/{test['id']}.png"
        result: Dict[str, Any] = {"testId": test["id"], "testName": test["name"], "status": status,
                                  "durationMs": self.rng.randint(800, 4000), "screenshotPath": shot,
                                  "videoPath": None}
        if status == "failed":
            result["error"] = "expected heading to be visible"
        self.results.append(result)
        results = list(self.results)
        await self.context.store.run(lambda: update_run(self.run_id, {"results": results}))
        signed = self.context.store.signer.sign_result(result, now_ms=int(time.time() * 1000))
        self.context.hub.emit(self.run_id, "result", {"result": signed})
        self.context.hub.emit(self.run_id, "screenshot",
                              {"testId": test["id"], "screenshotPath": signed["screenshotPath"]})
        await self.log(f"{'✔' if status == 'passed' else '✘'} {test['id']} {status}",
                       "info" if status == "passed" else "error")


async def drive_runs(
    context: Context,
    on_run: Callable[[str], None],
    step_s: float = 1.0,
    pause_s: float = 5.0,
    runs: Optional[int] = None,
    seed: Optional[int] = None,
) -> None:
    """Simulate runs one after another, forever unless ``runs`` is given."""
    rng = random.Random(seed)
    await context.store.run(seed_demo_sync)
    for number in itertools.count(1) if runs is None else range(1, runs + 1):
        run_id = await context.store.run(next_run_id_sync)
        demo = DemoRun(context, run_id, step_s, rng)
        await demo.create()
        on_run(run_id)
        await demo.play()
        if runs is None or number < runs:  # no pause after the last run: the demo ends at once
            await asyncio.sleep(pause_s)
