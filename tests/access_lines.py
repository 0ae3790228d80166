"""The access lines a test's requests wrote (``sentri.access``), without their timings."""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Tuple

import pytest


class AccessLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[Tuple[str, Dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(getattr(record, "fields", {}))
        fields.pop("ms", None)
        self.lines.append((record.getMessage(), fields))


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    logger = logging.getLogger("sentri.access")
    collector = AccessLines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(collector)
    yield collector
    logger.removeHandler(collector)
    logger.setLevel(level)
