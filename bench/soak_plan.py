"""The soak's seeded plan: which runs live when, how each client behaves, which fault comes when.

Every process of the soak (orchestrator, producers, clients, checker) rebuilds the same plan
from the same ``Plan`` parameters, so one ``--seed`` replays the fault schedule and every
client's behaviour (the timing of the machine itself is, of course, not replayed).
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Dict, List, Tuple

# Client behaviours, with their share of the clients.
#   follow: stays on its run until done, then takes another run
#   churn:  arrives, stays a few seconds, leaves (a normal close), takes another run
#   drop:   its connection vanishes without FIN now and then (RST); it reconnects as a browser does
#   slow:   reads in small pieces with pauses
BEHAVIOURS: Tuple[Tuple[str, float], ...] = (("follow", 0.5), ("churn", 0.2), ("drop", 0.15), ("slow", 0.15))

# Fault kinds, with their weight in the schedule.
FAULTS: Tuple[Tuple[str, float], ...] = (
    ("instance_kill", 1.0),       # SIGKILL one instance, restarted 1-3 s later
    ("instance_term", 1.0),       # SIGTERM (graceful drain), restarted once it has exited
    ("redis_pause", 1.0),         # SIGSTOP redis for 2-6 s, then SIGCONT
    ("redis_restart", 0.6),       # SIGTERM redis (appendonly: history kept), start it again
    ("nginx_reload", 1.0),        # nginx -s reload
    ("db_stall", 1.0),            # hold the database locked for 2-5 s
    ("client_stall", 1.0),        # some clients stop reading for 20-40 s (past the write bound)
)

# Event types producers publish, with their share (done is published once per run, at its end).
EVENT_MIX: Tuple[Tuple[str, float], ...] = (("log", 0.4), ("llm_token", 0.3), ("result", 0.15), ("frame", 0.15))


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    duration_s: float
    streams: int
    events_per_s: float
    fault_every_s: float
    instances: int
    listeners_per_run: int = 10
    run_life_s: Tuple[float, float] = (40.0, 120.0)
    warmup_s: float = 20.0
    # Only these fault kinds (empty: all of FAULTS, by weight): a targeted soak of one fault.
    fault_kinds: Tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        values = json.loads(text)
        values["run_life_s"] = tuple(values["run_life_s"])
        values["fault_kinds"] = tuple(values.get("fault_kinds", ()))
        return cls(**values)

    @property
    def concurrent_runs(self) -> int:
        return max(2, self.streams // self.listeners_per_run)

    def runs(self) -> List[Tuple[str, float, float]]:
        """(run id, start s, end s): ``concurrent_runs`` slots, each running runs back to back.

        The last run of a slot ends at the soak's end (the producers then publish its done)."""
        rng = random.Random(f"{self.seed}:runs")
        runs: List[Tuple[str, float, float]] = []
        for _slot in range(self.concurrent_runs):
            start = 0.0
            # Stagger the first runs so they do not all end together.
            first = rng.uniform(self.run_life_s[0] / 4, self.run_life_s[1])
            end = first
            while True:
                end = min(end, self.duration_s)
                runs.append((f"run-{len(runs)}", start, end))
                if end >= self.duration_s:
                    break
                start = end
                end = start + rng.uniform(*self.run_life_s)
        return runs

    def clients(self) -> List[Dict[str, Any]]:
        rng = random.Random(f"{self.seed}:clients")
        names = [name for name, _ in BEHAVIOURS]
        weights = [weight for _, weight in BEHAVIOURS]
        return [{"index": index, "behaviour": rng.choices(names, weights)[0], "seed": rng.getrandbits(32)}
                for index in range(self.streams)]

    def faults(self) -> List[Tuple[float, str, Dict[str, Any]]]:
        """(time s, kind, parameters), one every ``fault_every_s`` after the warm-up, none in the
        soak's last 20 s (the runs are being finished: every stream must end on its done)."""
        rng = random.Random(f"{self.seed}:faults")
        chosen = [(name, weight) for name, weight in FAULTS if not self.fault_kinds or name in self.fault_kinds]
        names = [name for name, _ in chosen]
        weights = [weight for _, weight in chosen]
        schedule: List[Tuple[float, str, Dict[str, Any]]] = []
        at = self.warmup_s
        while at < self.duration_s - 20 and self.fault_every_s > 0:
            kind = rng.choices(names, weights)[0]
            # Instance 0 is never killed or stopped: its memory over the whole soak is the RSS
            # witness (every other fault reaches it: its clients move, Redis and the database stall).
            params: Dict[str, Any] = {"instance": rng.randrange(1, self.instances) if self.instances > 1 else 0}
            params["seconds"] = round(rng.uniform(2, 6) if kind == "redis_pause" else rng.uniform(2, 5), 2)
            params["restart_after_s"] = round(rng.uniform(1, 3), 2)
            params["stall_s"] = round(rng.uniform(20, 40), 1)
            params["stall_share"] = 0.05
            params["pick"] = rng.getrandbits(32)
            schedule.append((round(at, 3), kind, params))
            at += self.fault_every_s
        return schedule
