"""Print the combined line and branch coverage and fail when either is under the bar.

``coverage report --fail-under`` checks one figure that mixes lines and branches; the
project's bar is 90 % of lines AND 90 % of branches, so each is checked on its own.
Usage: coverage_gate.py coverage.json [minimum percent]
"""

from __future__ import annotations

import json
import sys


def main(argv: list) -> int:
    with open(argv[1]) as report:
        totals = json.load(report)["totals"]
    minimum = float(argv[2]) if len(argv) > 2 else 90.0
    lines = 100.0 * totals["covered_lines"] / max(totals["num_statements"], 1)
    branches = 100.0 * totals["covered_branches"] / max(totals["num_branches"], 1)
    print(
        f"coverage: lines {lines:.1f}% ({totals['covered_lines']}/{totals['num_statements']}), "
        f"branches {branches:.1f}% ({totals['covered_branches']}/{totals['num_branches']}), minimum {minimum:g}%"
    )
    short = [name for name, value in (("lines", lines), ("branches", branches)) if value < minimum]
    if short:
        print(f"coverage: {' and '.join(short)} under {minimum:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
