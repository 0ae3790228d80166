"""Fail unless this environment runs exactly the lower bounds setup.cfg declares.

The tox ``oldest`` envs pin the oldest supported versions; this keeps those pins and the
``>=`` bounds in setup.cfg from drifting apart, so the bounds stay proven.
"""

from __future__ import annotations

import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def lower_bounds(setup_cfg: Path) -> dict:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    bounds = {}
    for line in parser.get("options", "install_requires").splitlines():
        match = BOUND.match(line.split(";")[0].split(",")[0])
        if match:
            bounds[match.group(1)] = match.group(2)
    return bounds


def release(version: str) -> list:
    """"5.0" and "5.0.0" name one release: drop trailing zero components."""
    parts = version.split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return parts


def main() -> int:
    bounds = lower_bounds(Path(__file__).resolve().parents[1] / "setup.cfg")
    wrong = []
    for name, bound in sorted(bounds.items()):
        installed = metadata.version(name)
        if release(installed) != release(bound):
            wrong.append(f"{name}: installed {installed}, setup.cfg lower bound {bound}")
        else:
            print(f"oldest supported {name} {installed}")
    for line in wrong:
        print(line, file=sys.stderr)
    return 1 if wrong or not bounds else 0


if __name__ == "__main__":
    sys.exit(main())
