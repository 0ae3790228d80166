"""The soak's checker: reads the histories of one soak and proves, per run and per client, the
promises of docs/ held under faults. Prints a verdict table, writes it (``verdict.md``,
``verdict.json``) and the histories of every violation (``violations/``) to ``--out``.

A *subscription* is one client's stay on one run: its connections in order, each with its
status, ``Last-Event-ID`` sent, ``Sentri-Resume`` answer, snapshot (id and the log tags it
held) and frames (id, type, tag, CRC). For each subscription:

- **order**: ids only grow on a connection (from the snapshot's id or the ``Last-Event-ID``
  sent on a replay), never repeat;
- **duplicates**: an event's tag is received live at most once (an event its producer had to
  retry after an ambiguous failure may be there twice: counted apart, not a violation);
- **lost**: every event answered ``202`` for the run after the subscription's cut (the first
  snapshot's id; for an event answered without an id, its answer time after the first
  response head) and, when the client left early, up to the newest id it received, reached
  the client; except what the contract documents: a ``log`` may come inside a later snapshot
  instead; an event whose id falls between the ``Last-Event-ID`` of a resume answered with a
  snapshot (history trimmed or unreadable, docs/resume.md §3) and that snapshot's id; a
  ``frame`` replaced by a newer one for a slow reader (docs/stream.md §10);
- **snapshot**: every ``log`` with an id up to the snapshot's id is in the snapshot;
- **done**: a subscription of a finished run that the client did not leave ends on ``done``
  (or ``204``), nothing after it, and no connection of the run stays open more than
  ``OUTLIVE_BOUND_S`` after its ``done`` was answered;
- **run_logs**: every ``log`` answered ``202`` is a row of ``run_logs``;
- **5xx**: every 5xx a producer or client got is a documented, retryable one.

    python bench/soak_check.py WORK_FOLDER DATABASE_URL --out FOLDER
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from soak_plan import Plan

# A connection of a finished run still open this long after its done was answered outlived it.
OUTLIVE_BOUND_S = 20.0
# Documented retryable 5xx bodies (docs/stream.md §2, docs/publish.md §3).
DOCUMENTED_503 = ('"database unavailable"', '"server is shutting down"', '"too many SSE listeners on this run"',
                  '"stream closed before it opened"')
# nginx's answer for a request held by an instance that died (SIGKILL): docs/publish.md §3 "Retrying".
NGINX_502 = "<title>502 Bad Gateway</title>"
# A publish still in its database turn when its instance exited (docs/publish.md §3): may be stored.
INTERRUPTED_504 = '"server stopped before the publish finished'


def documented_5xx(status: int, body: str) -> bool:
    if status == 503:
        return any(text in body for text in DOCUMENTED_503)
    if status == 504:
        return INTERRUPTED_504 in body
    return status == 502 and NGINX_502 in body
LOG_TAG = re.compile(r"soak:([0-9]+\.[0-9a-z]+)")
VIOLATIONS_KEPT_PER_KIND = 10

IdKey = Tuple[int, int]


def id_key(event_id: Optional[str]) -> Optional[IdKey]:
    if not event_id:
        return None
    first, _, second = event_id.partition("-")
    return int(first), int(second)


class Published:
    """What the producers were answered, per run: tag -> (type, id key, answer time, ambiguous)."""

    def __init__(self, work: str) -> None:
        self.events: Dict[str, Dict[str, Tuple[str, Optional[IdKey], float, bool]]] = collections.defaultdict(dict)
        self.done: Dict[str, Tuple[Optional[IdKey], float]] = {}
        self.by_via: collections.Counter = collections.Counter()
        self.tries: collections.Counter = collections.Counter()
        self.refused: List[Dict[str, Any]] = []
        self.unexpected_5xx: List[Any] = []
        self.ambiguous = 0
        self.log_tags: Set[str] = set()
        self.outage_tags: Set[str] = set()  # answered without an id: Redis was unreachable (the outbox)
        # Epoch seconds of the soak's time zero, as Redis's clock gives it: an id's milliseconds
        # minus this is when the event entered history, in soak time. The largest (id time -
        # answer time) over events answered with their id: an answer never precedes its id.
        self.clock_offset = float("-inf")
        with open(os.path.join(work, "producers.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                for attempt in record["tries"]:
                    outcome = attempt[1]
                    if isinstance(outcome, int):
                        documented = documented_5xx(outcome, attempt[2])
                        key = f"{outcome} {'documented' if documented else 'UNDOCUMENTED'}" if outcome >= 500 \
                            else str(outcome)
                        if outcome >= 500 and not documented:
                            self.unexpected_5xx.append(["producer", record["via"], record["r"], attempt])
                    else:
                        key = outcome.split(":")[0]
                    self.tries[f"{record['via']}: {key}"] += 1
                if "ids" not in record:
                    self.refused.append(record)
                    continue
                ambiguous = bool(record.get("ambiguous"))
                self.ambiguous += ambiguous * len(record["tags"])
                for tag, event_type, event_id in zip(record["tags"], record["types"], record["ids"]):
                    self.by_via[record["via"].split("-")[0]] += 1
                    if event_type == "done":
                        self.done[record["r"]] = (id_key(event_id), record["ta"])
                        continue
                    self.events[record["r"]][tag] = (event_type, id_key(event_id), record["ta"], ambiguous)
                    if event_id is None:
                        self.outage_tags.add(tag)
                    else:
                        self.clock_offset = max(self.clock_offset, int(event_id.split("-")[0]) / 1000 - record["ta"])
                    if event_type == "log":
                        self.log_tags.add(tag)

    def count(self) -> int:
        return sum(len(tags) for tags in self.events.values())


def subscriptions(work: str) -> Iterator[Dict[str, Any]]:
    for path in sorted(glob.glob(os.path.join(work, "clients-*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


class Verdict:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.violations: List[Tuple[str, Dict[str, Any], str]] = []
        self.violation_counts: collections.Counter = collections.Counter()
        self.done_latency_s: List[float] = []

    def violate(self, kind: str, subscription: Dict[str, Any], detail: str) -> None:
        self.violation_counts[kind] += 1
        if self.violation_counts[kind] <= VIOLATIONS_KEPT_PER_KIND:
            self.violations.append((kind, subscription, detail))


def learn_null_ids(work: str, published: Published) -> None:
    """Events answered without an id (Redis unreachable: the outbox) got one later: learn it from
    any client that received the event with an id."""
    wanted = {(run, tag) for run, tags in published.events.items() for tag, event in tags.items() if event[1] is None}
    if not wanted:
        return
    for subscription in subscriptions(work):
        for connection in subscription["conns"]:
            for event_id, _, tag, _ in connection.get("f", ()):
                if event_id and (subscription["r"], tag) in wanted:
                    event_type, _, answered, ambiguous = published.events[subscription["r"]][tag]
                    published.events[subscription["r"]][tag] = (event_type, id_key(event_id), answered, ambiguous)
                    wanted.discard((subscription["r"], tag))


def check_subscription(subscription: Dict[str, Any], published: Published, verdict: Verdict) -> None:
    run_id = subscription["r"]
    events = published.events.get(run_id, {})
    done = published.done.get(run_id)
    counts = verdict.counts
    counts["subscriptions"] += 1
    counts[f"subscriptions ending {subscription['end']}"] += 1
    conns = subscription["conns"]
    counts["connections"] += len(conns)
    first = next((index for index, connection in enumerate(conns) if connection.get("st") == 200), None)
    for connection in conns:
        status = connection.get("st")
        counts[f"connection answers {status}"] += 1
        if status and status >= 500:
            body = connection.get("body", "")
            if not documented_5xx(status, body):
                verdict.violate("unexpected 5xx", subscription, f"{status} {body}")
        if status == 204 and (done is None or done[1] > connection["th"] + 0.5):
            verdict.violate("204 before the run's done", subscription, json.dumps(connection)[:300])
        # A client that was not reading (a client_stall fault) learns of the end only when it reads again.
        stalled_until = max((end for _, end in connection.get("stalls", ())), default=0.0)
        if done is not None and status == 200 and connection.get("end") not in ("left", "drop", "done") \
                and connection["te"] > max(done[1], stalled_until) + OUTLIVE_BOUND_S:
            verdict.violate("stream outlived its run", subscription,
                                f"open until {connection['te']}, done answered at {done[1]}")
        if connection.get("after_done"):
            verdict.violate("bytes after done", subscription, str(connection.get("after_done")))
    ended_by_client = subscription["end"] == "left"
    if done is not None and not ended_by_client and subscription["end"] not in ("done", "204"):
        verdict.violate("did not end on done", subscription, f"ended {subscription['end']}")
    if subscription["end"] == "done":
        last = conns[-1]
        verdict.done_latency_s.append(max(0.0, last["done_t"] - done[1]) if done else 0.0)
    if done is None and subscription["end"] in ("done",):
        verdict.violate("done without a published done", subscription, "")
    if first is None:
        return
    # Walk the connections: order, duplicates, what arrived live or in a snapshot.
    live: Dict[str, int] = {}
    idless: Set[str] = set()  # tags first received without an id (delivered during a Redis outage)
    ids_of: Dict[str, Set[str]] = {}  # the ids each tag came with
    in_snapshots: Set[str] = set()
    # Resyncs: (id, id], (t, t], and when the resyncing request was sent.
    windows: List[Tuple[Optional[IdKey], Optional[IdKey], float, float, float]] = []
    frames_seen: List[IdKey] = []
    newest: Optional[IdKey] = None
    last_frame_t = conns[first].get("th", 0.0)
    first_snapshot = conns[first].get("snap")
    cut_id = id_key(first_snapshot[0]) if first_snapshot else None
    cut_t = conns[first]["th"]
    previous_end_t = cut_t
    for index in range(first, len(conns)):
        connection = conns[index]
        if connection.get("st") != 200:
            continue
        start: Optional[IdKey] = None
        snapshot = connection.get("snap")
        if snapshot is not None:
            in_snapshots.update(snapshot[1])
            start = id_key(snapshot[0])
            if index != first:
                windows.append((newest, start, previous_end_t, connection["th"], connection["t0"]))
            # Logs are stored before they are published: one with an id up to the snapshot's is in
            # it. (A snapshot without an id makes no such claim: what it lacks must come live.)
            for tag, (event_type, event_id, _, _) in events.items():
                if event_type == "log" and start is not None and event_id is not None and event_id <= start \
                        and tag not in snapshot[1]:
                    verdict.violate("snapshot lacks a stored log", subscription, f"{tag} id {event_id}")
        elif connection.get("sr") == "replay":
            start = id_key(connection.get("lei"))
        previous = start
        for event_id, event_type, tag, _ in connection["f"]:
            if event_type == "snapshot":
                continue
            counts["frames checked"] += 1
            key = id_key(event_id)
            if key is not None:
                # A finished run's done carries the snapshot's id (docs/stream.md §8): not a step back.
                same_as_snapshot = event_type == "done" and snapshot is not None and event_id == snapshot[0]
                if previous is not None and key <= previous and not same_as_snapshot:
                    verdict.violate("out of order", subscription, f"{event_id} after {previous}")
                previous = key
                newest = key if newest is None or key > newest else newest
                frames_seen.append(key)
            if tag:
                live[tag] = live.get(tag, 0) + 1
                if not event_id:
                    idless.add(tag)
                else:
                    ids_of.setdefault(tag, set()).add(event_id)
                if live[tag] == 2:
                    event = events.get(tag)
                    if event is not None and event[3]:
                        counts["twice: publish retried after an ambiguous failure (at-least-once)"] += 1
                    elif tag in idless and event_id:
                        counts["twice: first without an id in a Redis outage, then with it (documented)"] += 1
                    elif not event_id and tag in published.outage_tags:
                        counts["twice: a batch put back when Redis went away mid-pipeline (documented)"] += 1
                    elif event_id and len(ids_of[tag]) == 2:
                        # Two ids: the event is in history twice (relay.md §6: a batch put back
                        # after Redis went away mid-pipeline is published again).
                        counts["twice, with two ids: in history twice after a batch was put back (documented)"] += 1
                    else:
                        verdict.violate("duplicated", subscription, f"{tag} ({event_type}) twice")
        if connection["f"]:
            last_frame_t = connection["te"]
        previous_end_t = connection.get("te", previous_end_t)
    finished = subscription["end"] in ("done", "204")
    # A done without an id was delivered by its instance during a Redis outage (docs/relay.md §6).
    last_frames = conns[-1].get("f") or [["x", ""]]
    outage_done = subscription["end"] == "done" and last_frames[-1][1] == "done" and not last_frames[-1][0]
    newest_frame = max((events[tag][1] for tag in live if tag in events and events[tag][1] is not None),
                       default=None)
    frame_ids = sorted(events[tag][1] for tag in live if tag in events and events[tag][0] == "frame"
                       and events[tag][1] is not None)
    done_answered = done[1] if done is not None else None
    for tag, (event_type, event_id, answered, _) in events.items():
        if event_id is not None:
            if cut_id is not None and event_id <= cut_id:
                continue
            if cut_id is None and answered < cut_t:
                continue  # a snapshot without an id (history unreadable then): what came before
            if not finished and (newest is None or event_id > newest):
                continue
        else:
            if answered <= cut_t + 0.5 or (not finished and answered >= last_frame_t - 10):
                continue
        counts["events checked"] += 1
        if tag in live:
            continue
        if event_type == "log" and tag in in_snapshots:
            counts["log received inside a later snapshot"] += 1
            continue
        if event_type == "frame" and frame_ids and event_id is not None and event_id < frame_ids[-1]:
            counts["frame replaced by a newer one (documented)"] += 1
            continue
        if outage_done and (event_id is None or newest is None or event_id > newest):
            counts["overtaken by a done delivered in a Redis outage (documented)"] += 1
            continue
        if event_id is None and finished and done_answered is not None and answered <= done_answered:
            # Accepted into one instance's outbox (Redis away from it), and the run's done published
            # through another instance that reached Redis first: the outbox reaches history after
            # the done, which ends every stream (docs/relay.md §6, no order across instances).
            counts["overtaken by a done while another instance's outbox held it (documented)"] += 1
            continue
        if any(_in_window(event_id, answered, window, published.clock_offset) for window in windows):
            counts["between a resume's id and its snapshot (documented)"] += 1
            continue
        verdict.violate("lost", subscription, f"{tag} ({event_type}, id {event_id}, answered {answered})")
    del newest_frame


def _in_window(event_id: Optional[IdKey], answered: float,
               window: Tuple[Optional[IdKey], Optional[IdKey], float, float, float], clock_offset: float) -> bool:
    low, high, start_t, end_t, asked_t = window
    if event_id is None:
        return start_t - 1 <= answered <= end_t + 1
    if low is not None and event_id <= low:
        return False
    if high is not None:
        return event_id <= high
    # A snapshot without an id (history unreadable then): what it lacks of the events already in
    # Redis when the request was sent is the documented gap. When the event was added is read from
    # its id (Redis's clock, milliseconds); the producer's answer can come much later under load.
    return answered <= end_t or event_id[0] / 1000 - clock_offset <= asked_t


def stored_log_tags(database_url: str) -> collections.Counter:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sentri.store import close_pool, open_database

    database = open_database(database_url, "", 1)
    tags: collections.Counter = collections.Counter()
    try:
        for (message,) in database.execute_sql("SELECT message FROM run_logs").fetchall():
            match = LOG_TAG.search(message)
            if match:
                tags[match.group(1)] += 1
    finally:
        close_pool(database)
    return tags


def rss_from_s(plan: Plan) -> float:
    """Where RSS growth is measured from: after the warm-up and the first third of the soak, so
    the high-water mark of streams an instance takes over from killed ones is reached first."""
    return max(plan.warmup_s, plan.duration_s / 3)


def rss_rows(work: str, plan: Plan) -> Tuple[List[List[str]], Optional[float]]:
    """Per instance incarnation living past ``rss_from_s``: RSS then, at the end, growth. The
    target applies to instance 0, which faults never restart (the witness)."""
    samples: Dict[Tuple[int, int], List[Tuple[float, int]]] = collections.defaultdict(list)
    streams: Dict[Tuple[int, int], List[Tuple[float, int]]] = collections.defaultdict(list)
    with open(os.path.join(work, "rss.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["t"] > plan.duration_s:
                continue
            open_now = row.get("streams") or [None] * len(row["rss_kb"])
            for index, (size, incarnation) in enumerate(zip(row["rss_kb"], row["incarnation"])):
                if size is not None:
                    samples[(index, incarnation)].append((row["t"], size))
                if open_now[index] is not None:
                    streams[(index, incarnation)].append((row["t"], open_now[index]))
    rows: List[List[str]] = []
    witness_growth: Optional[float] = None
    for (index, incarnation), points in sorted(samples.items()):
        after = [size for t, size in points if t >= rss_from_s(plan)]
        if len(after) < 10:
            continue
        window = max(3, len(after) // 10)
        base = statistics.median(after[:window])
        end = statistics.median(after[-window:])
        growth = (end / base - 1) * 100
        if index == 0 and incarnation == 0:
            witness_growth = growth
        counts = [count for t, count in streams[(index, incarnation)] if t >= rss_from_s(plan)]
        held = (f"{statistics.median(counts[:window]):.0f} / {statistics.median(counts[-window:]):.0f} / "
                f"{max(counts)}") if len(counts) >= window else "n/a"
        rows.append([f"instance {index}" + (f" (restart {incarnation})" if incarnation else " (never restarted)"),
                     f"{points[0][1] / 1024:.0f} MB", f"{base / 1024:.0f} MB", f"{end / 1024:.0f} MB",
                     f"{max(size for _, size in points) / 1024:.0f} MB", f"{growth:+.1f} %", held])
    return rows, witness_growth


def check(work: str, database_url: str, out: str, started: str = "", database: str = "sqlite",
          failed_children: int = 0, rss_target_pct: float = 5.0, redis_kind: str = "single") -> bool:
    with open(os.path.join(work, "plan.json"), encoding="utf-8") as handle:
        plan = Plan.from_json(handle.read())
    published = Published(work)
    learn_null_ids(work, published)
    verdict = Verdict()
    for subscription in subscriptions(work):
        check_subscription(subscription, published, verdict)
    stored = stored_log_tags(database_url)
    missing_logs = sorted(tag for tag in published.log_tags if not stored.get(tag))
    faults: collections.Counter = collections.Counter()
    failed_faults: List[str] = []
    with open(os.path.join(work, "faults.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            fault = json.loads(line)
            faults[fault["kind"]] += 1
            if fault["what"].startswith("FAILED"):
                failed_faults.append(f"{fault['kind']} at {fault['t']}: {fault['what']}")
    rss, witness_growth = rss_rows(work, plan)
    kinds = ("lost", "duplicated", "out of order", "stream outlived its run", "did not end on done",
             "bytes after done", "snapshot lacks a stored log", "204 before the run's done",
             "done without a published done", "unexpected 5xx")
    problems = {kind: verdict.violation_counts.get(kind, 0) for kind in kinds}
    problems["unexpected 5xx"] += len(published.unexpected_5xx)
    problems["log missing from run_logs"] = len(missing_logs)
    problems["publish refused (not retried)"] = len(published.refused)
    problems["fault that failed to apply"] = len(failed_faults)
    problems["soak process failed"] = failed_children
    rss_judged = rss_target_pct > 0
    rss_ok = not rss_judged or (witness_growth is not None and witness_growth < rss_target_pct)
    clean = not any(problems.values()) and rss_ok and verdict.counts["events checked"] > 0
    redis_text = "a Redis Cluster (3 masters, 3 replicas)" if redis_kind == "cluster" else "one Redis (appendonly)"
    lines = [f"# Soak verdict: {'CLEAN' if clean else 'VIOLATIONS'}", "",
             f"{started}; seed {plan.seed}; {plan.duration_s:.0f} s; {plan.instances} instances behind nginx; "
             f"{plan.streams} streams; {plan.events_per_s:.0f} events/s; a fault every {plan.fault_every_s:.0f} s "
             f"after {plan.warmup_s:.0f} s; {len(plan.runs())} runs; {database}; "
             f"{redis_text}", "",
             "| promise | violations |", "|---|---|"]
    lines += [f"| {kind} | {count} |" for kind, count in problems.items()]
    growth_text = "n/a" if witness_growth is None else f"{witness_growth:+.1f} %"
    judged_text = ("ok" if rss_ok else "FAILED") if rss_judged else "(reported, not judged)"
    lines += [f"| RSS growth of instance 0 from {rss_from_s(plan):.0f} s < {rss_target_pct:g} % | "
              f"{growth_text} {judged_text} |",
              "", "| measured | count |", "|---|---|"]
    lines += [f"| events answered 202 ({via}) | {count} |" for via, count in sorted(published.by_via.items())]
    lines += [f"| events answered 202 (all) | {published.count()} |",
              f"| runs ended with done | {len(published.done)} |",
              f"| events published again after an ambiguous failure | {published.ambiguous} |",
              f"| events answered without an id (Redis away: the outbox) | {len(published.outage_tags)} |"]
    lines += [f"| {name} | {count} |" for name, count in sorted(verdict.counts.items())]
    lines += [f"| publish tries that failed, {name} | {count} |" for name, count in sorted(published.tries.items())]
    lines += [f"| log lines in run_logs / answered 202 | {sum(stored.values())} / {len(published.log_tags)} |"]
    if verdict.done_latency_s:
        ordered = sorted(verdict.done_latency_s)
        lines += [f"| done answered -> client got done, median / p99 / max | {statistics.median(ordered):.2f} / "
                  f"{ordered[int(len(ordered) * 0.99)]:.2f} / {ordered[-1]:.2f} s |"]
    lines += ["", "| fault | injected |", "|---|---|"]
    lines += [f"| {kind} | {count} |" for kind, count in sorted(faults.items())]
    lines += ["", "| RSS | first | after warm-up | at the end | max | growth | streams open then / at the end / max |",
              "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rss]
    if failed_faults:
        lines += ["", "Faults that failed:"] + [f"- {text}" for text in failed_faults]
    if published.unexpected_5xx:
        lines += ["", "Unexpected 5xx (producers), first 10:"] + [f"- {item}" for item in published.unexpected_5xx[:10]]
    if missing_logs:
        lines += ["", f"Log lines missing from run_logs, first 10: {missing_logs[:10]}"]
    text = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "verdict.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(os.path.join(out, "verdict.json"), "w", encoding="utf-8") as handle:
        json.dump({"clean": clean, "plan": json.loads(plan.to_json()), "started": started, "database": database,
                   "redis": redis_kind, "problems": problems, "counts": dict(verdict.counts), "faults": dict(faults),
                   "published": dict(published.by_via), "rss_witness_growth_pct": witness_growth,
                   "rss": rss, "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle, indent=1)
    write_violations(out, verdict, published)
    print(text, flush=True)
    return clean


def write_violations(out: str, verdict: Verdict, published: Published) -> None:
    """Each kept violation: the subscription's whole history and what was published on its run."""
    folder = os.path.join(out, "violations")
    if os.path.isdir(folder):
        for old in glob.glob(os.path.join(folder, "*.json")):
            os.remove(old)
    if not verdict.violations:
        return
    os.makedirs(folder, exist_ok=True)
    for number, (kind, subscription, detail) in enumerate(verdict.violations):
        run_id = subscription["r"]
        name = f"{number:02d}-{kind.replace(' ', '-')}-client{subscription['c']}-{run_id}.json"
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump({"violation": kind, "detail": detail, "subscription": subscription,
                       "published": {tag: list(event) for tag, event in published.events.get(run_id, {}).items()},
                       "done": published.done.get(run_id)}, handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="the soak's work folder (bench/soak.py --work or --keep)")
    parser.add_argument("database_url")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    return 0 if check(args.work, args.database_url, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
