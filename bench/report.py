"""Turn benchmark JSON into the report: a markdown table and a PNG chart.

    python bench/report.py results/side-by-side.json [results/publish-paths.json ...]
        [--scenarios results/scenarios.json] [--out results/report]

Reads the side-by-side harness's JSON files (``bench.py --json``) and, optionally, the JSON
of ``bench/scenarios.py``. Writes ``<out>.md`` (one table, one column per peer, a row per
measure, with the issue's target next to ours) and ``<out>.png`` (fan-out latency
percentiles, memory per stream at 19,000 streams, delivered events/s, idle CPU).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Tuple

Row = Tuple[str, str, str]  # label, scenario, field

ROWS: List[Row] = [
    ("hold 10k: connect s", "hold", "connect_time_s"),
    ("hold 10k: KB/stream", "hold", "rss_per_conn_kb"),
    ("hold 10k: idle CPU %", "hold", "idle_cpu_pct"),
    ("hold-big 19k: connected", "hold-big", "connected"),
    ("hold-big 19k: connect s", "hold-big", "connect_time_s"),
    ("hold-big 19k: failed connects / non-200", "hold-big", "_failed"),
    ("hold-big 19k: connects/s", "hold-big", "_rate"),
    ("hold-big 19k: connects/s ÷ tornado-floor's (same run)", "hold-big", "_floor"),
    ("hold-big 19k: machine busy before (bg) / other CPU during, % of a core", "hold-big", "_noise"),
    ("hold-big 19k: KB/stream", "hold-big", "rss_per_conn_kb"),
    ("hold-big 19k: idle CPU %", "hold-big", "idle_cpu_pct"),
    ("hold-big 19k: heartbeats rcvd / expected", "hold-big", "_hb"),
    ("fanout 5k: delivered / expected", "fanout", "_delivered"),
    ("fanout 5k: p50 ms", "fanout", "lat_p50_ms"),
    ("fanout 5k: p99 ms", "fanout", "lat_p99_ms"),
    ("fanout 5k: max ms", "fanout", "lat_max_ms"),
    ("fanout 5k: server CPU %", "fanout", "server_cpu_pct"),
    ("throughput: publishes/s", "throughput", "published_per_s"),
    ("throughput: delivered events/s", "throughput", "delivered_per_s"),
    ("throughput: delivered / expected", "throughput", "delivered_ratio"),
    ("throughput: p99 ms", "throughput", "lat_p99_ms"),
    ("throughput: server CPU %", "throughput", "server_cpu_pct"),
    ("busiest client process CPU % (fanout / throughput)", "_clients", ""),
    ("machine busy before scenario, % of a core (max)", "_noise", ""),
]


# The harness's peer doing only what Tornado must per connect (parse, fixed token, fixed snapshot, detach).
FLOOR_PEER = "tornado-floor"


def connects_per_s(result: Dict[str, Any]) -> Optional[float]:
    """Connections taken in per second while the load connected them (connected / connect time)."""
    seconds, connected = result.get("connect_time_s"), result.get("connected")
    if not seconds or not connected:
        return None
    return round(connected / seconds)


def load(paths: List[str]) -> Tuple[List[Dict[str, Any]], List[str]]:
    results: List[Dict[str, Any]] = []
    meta: List[str] = []
    for path in paths:
        with open(path) as handle:
            saved = json.load(handle)
        results.extend(saved["results"])
        argv = list(saved["meta"]["argv"])
        for i, arg in enumerate(argv[:-1]):
            if arg == "--token":
                argv[i + 1] = '"$TOKEN"'  # a JWT: never copied into a report
        meta.append(f"{os.path.basename(path)}: {saved['meta']['date']}, `bench.py {' '.join(argv)}`")
    return results, meta


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def spread(values: List[Any]) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "–"
    if isinstance(values[0], str):
        return values[0] if len(set(values)) == 1 else " / ".join(values)
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)}–{fmt(high)}"


def cell(results: List[Dict[str, Any]], peer: str, scenario: str, field: str) -> str:
    if scenario == "_clients":
        values = [r["result"].get("client_max_proc_cpu_pct") for r in results
                  if r["peer"] == peer and r["scenario"] in ("fanout", "throughput")]
        return spread(values)
    if scenario == "_noise":
        values = [r["result"].get("background_busy_pct") for r in results if r["peer"] == peer]
        values = [value for value in values if value is not None]
        return fmt(max(values)) if values else "–"
    runs = [r["result"] for r in results
            if r["peer"] == peer and r["scenario"] == scenario and "error" not in r["result"]]
    if field == "_failed":
        return spread([f"{r.get('failed_connects')} / {r.get('non_200')}" for r in runs])
    if field == "_rate":
        return spread([connects_per_s(r) for r in runs])
    if field == "_floor":
        floors = [connects_per_s(r["result"]) for r in results if r["peer"] == FLOOR_PEER
                  and r["scenario"] == scenario and "error" not in r["result"]]
        floor = max((value for value in floors if value), default=None)
        return spread([round(rate / floor, 2) for rate in map(connects_per_s, runs) if rate and floor])
    if field == "_noise":
        return spread([f"{fmt(r.get('background_busy_pct'))} / {fmt(r.get('other_cpu_pct'))}" for r in runs])
    if field == "_hb":
        return spread([f"{r.get('heartbeats_in_window')} / {r.get('heartbeats_expected')}" for r in runs])
    if field == "_delivered":
        return spread([f"{r.get('delivered')} / {r.get('expected')}" for r in runs])
    return spread([r.get(field) for r in runs])


def table(results: List[Dict[str, Any]]) -> str:
    peers: List[str] = []
    for r in results:
        if r["peer"] not in peers:
            peers.append(r["peer"])
    lines = ["| measure | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
    for label, scenario, field in ROWS:
        cells = [cell(results, peer, scenario, field) for peer in peers]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scenario_tables(scenarios: Dict[str, Any]) -> str:
    out: List[str] = []
    storms = [(key, value) for key, value in scenarios.items() if key.startswith("storm_")]
    if storms:
        out += ["### Reconnect storm (all clients at once, each authenticated and served a snapshot)", "",
                "| database | clients | connected | all streaming | seconds until all streaming | KB/stream | "
                "busiest client CPU % |", "|---|---|---|---|---|---|---|"]
        for _, s in storms:
            out.append(f"| {s['database']} | {s['n']} | {s['connected']} | {s['all_streaming']} | "
                       f"{s['wall_until_all_streaming_s']} | {s['kb_per_stream']} | {s['client_max_cpu_pct']} |")
        out.append("")
    slow = [(key, value) for key, value in scenarios.items() if key.startswith("slowdb_")]
    if slow:
        out += ["### Slow database (open streams while newcomers' lookups wait)", "",
                "| query delay ms | open streams | events delivered / expected | p50 ms | p99 ms | max ms | "
                "heartbeats / expected | newcomers streaming | newcomers ready s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for _, s in slow:
            out.append(f"| {s['delay_ms']} | {s['open_streams']} | {s['events_delivered']} / {s['events_expected']} | "
                       f"{s['latency_p50_ms']} | {s['latency_p99_ms']} | {s['latency_max_ms']} | "
                       f"{s['heartbeats']} / {s['heartbeats_expected']} | {s['newcomers_connected']} | "
                       f"{s['newcomers_ready_s']} |")
        out.append("")
    cycles = scenarios.get("cycles")
    if cycles:
        out += ["### Connect/disconnect cycles (RSS after each round, all streams closed)", "",
                "| cycles | RSS MB | diag line |", "|---|---|---|"]
        for r in cycles["rounds"]:
            out.append(f"| {r['cycles']} | {r['rss_mb']} | `{r['last_diag']}` |")
        out.append(f"\nAfter the last round, idle: `{cycles['final_diag']}`\n")
    return "\n".join(out)


def chart(results: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers: List[str] = []
    for r in results:
        if r["peer"] not in peers:
            peers.append(r["peer"])

    def first(peer: str, scenario: str) -> Optional[Dict[str, Any]]:
        # The last successful result: a later file (a re-run) replaces an earlier one.
        found = [r["result"] for r in results
                 if r["peer"] == peer and r["scenario"] == scenario and "error" not in r["result"]]
        return found[-1] if found else None

    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    fan = [(p, first(p, "fanout")) for p in peers if first(p, "fanout")]
    ax = axes[0][0]
    width = 0.8 / max(len(fan), 1)
    marks = ["lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms"]
    for i, (peer, r) in enumerate(fan):
        assert r is not None
        ax.bar([x + i * width for x in range(len(marks))], [r.get(m) or 0 for m in marks], width, label=peer)
    ax.set_xticks([x + width * (len(fan) - 1) / 2 for x in range(len(marks))])
    ax.set_xticklabels(["p50", "p90", "p99", "max"])
    ax.set_ylabel("ms, publish to receive")
    ax.set_title("fan-out: 5,000 listeners on one run")
    ax.legend(fontsize=8)

    def bars(ax: Any, scenario: str, field: str, title: str, unit: str) -> None:
        rows = [(p, first(p, scenario)) for p in peers if first(p, scenario)]
        names = [p for p, _ in rows]
        values = [(r or {}).get(field) or 0 for _, r in rows]
        ax.bar(names, values, color=[f"C{peers.index(n)}" for n in names])
        ax.set_title(title)
        ax.set_ylabel(unit)
        for x, value in enumerate(values):
            ax.annotate(fmt(value), (x, value), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=15)

    bars(axes[0][1], "hold-big", "rss_per_conn_kb", "memory per stream, 19,000 streams", "KB RSS / stream")
    bars(axes[1][0], "throughput", "delivered_per_s", "delivered events/s, 1,000 listeners on 100 runs", "events/s")
    bars(axes[1][1], "hold-big", "idle_cpu_pct", "idle CPU, 19,000 streams, 5 s heartbeats", "% of one core")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harness_json", nargs="+")
    parser.add_argument("--scenarios", action="append", default=[],
                        help="JSON written by bench/scenarios.py (repeatable)")
    parser.add_argument("--out", help="output path without extension [default: next to the first JSON, report]")
    args = parser.parse_args()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.harness_json[0])), "report")
    results, meta = load(args.harness_json)
    parts = ["## Side by side (one server process each)", "", table(results), "", "Sources: " + "; ".join(meta), ""]
    scenarios: Dict[str, Any] = {}
    for path in args.scenarios:
        with open(path) as handle:
            scenarios.update(json.load(handle))
    if scenarios:
        parts.append(scenario_tables(scenarios))
    text = "\n".join(parts) + "\n"
    with open(out + ".md", "w") as handle:
        handle.write(text)
    chart(results, out + ".png")
    print(text)
    print(f"wrote {out}.md and {out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
