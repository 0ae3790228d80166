"""A test that logs a WARNING or worse fails, unless it says it expects that line.

Tornado's own suite works this way (``ExpectLog``, ``--fail-if-logs``): a warning nobody
asked for is a bug report nobody reads. Every test gets ``fail_on_unexpected_logs``
(autouse, from tests/conftest.py); a test that provokes a warning on purpose declares it::

    def test_relay_reports_the_outage(expect_log):
        with expect_log("sentri.bus", r"relay disconnected"):
            ...                      # the line must be logged inside the block

    def test_slow_reader_is_dropped(expect_log):
        expect_log("sentri.hub", r"too slow", level=logging.WARNING)   # for the whole test

An expectation is an assertion too: it fails the test when no matching line was logged
(``required=False`` makes it a mere allowance). Records are matched on the logger name
(the name or a child of it), the level (at least ``level``) and a regular expression
searched in the formatted message. Lines from any thread count, database threads included.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import threading
from types import TracebackType
from typing import Callable, Iterator, List, Optional, Pattern, Type

import pytest

__all__ = ["ExpectedLog", "LogChecker", "expect_log", "fail_on_unexpected_logs", "root_logging_restored"]


class ExpectedLog:
    """One declared line: which logger, how severe, what text; counts the lines it matched."""

    def __init__(self, checker: LogChecker, logger: str, pattern: str, level: int, required: bool) -> None:
        self.checker = checker
        self.logger = logger
        self.pattern: Pattern[str] = re.compile(pattern)
        self.level = level
        self.required = required
        self.matched = 0
        self.active = True

    def matches(self, record: logging.LogRecord) -> bool:
        if not self.active or record.levelno < self.level:
            return False
        if self.logger and record.name != self.logger and not record.name.startswith(self.logger + "."):
            return False
        return self.pattern.search(record.getMessage()) is not None

    def describe(self) -> str:
        return f"{logging.getLevelName(self.level)}+ on {self.logger or 'any logger'} matching {self.pattern.pattern!r}"

    def __enter__(self) -> ExpectedLog:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        # Leaving the block ends the allowance; the check is skipped when the block raised,
        # so the test reports its own error rather than a missing log line.
        self.active = False
        if exc_type is None and self.required and self.matched == 0:
            pytest.fail(f"expected a log line that was never written: {self.describe()}", pytrace=False)


class LogChecker(logging.Handler):
    """A root-logger handler that keeps every record >= WARNING no expectation accounts for."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.expectations: List[ExpectedLog] = []
        self.unexpected: List[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            for expectation in self.expectations:
                if expectation.matches(record):
                    expectation.matched += 1
                    return
            self.unexpected.append(record)

    def expect(
        self, logger: str, pattern: str = "", level: int = logging.WARNING, required: bool = True
    ) -> ExpectedLog:
        expectation = ExpectedLog(self, logger, pattern, level, required)
        with self._records_lock:
            self.expectations.append(expectation)
        return expectation

    def problems(self) -> List[str]:
        lines = [
            f"unexpected log line: {record.levelname} {record.name}: {record.getMessage()}"
            for record in self.unexpected
        ]
        lines += [
            f"expected a log line that was never written: {expectation.describe()}"
            for expectation in self.expectations
            if expectation.active and expectation.required and expectation.matched == 0
        ]
        return lines


@pytest.fixture(autouse=True)
def fail_on_unexpected_logs() -> Iterator[LogChecker]:
    """Collect WARNING+ records during the test (setup and teardown of its fixtures included)."""
    checker = LogChecker()
    root = logging.getLogger()
    root.addHandler(checker)
    # Records below the root level never reach a handler; WARNING is Python's default, but a
    # test that configured logging (sentri.logs.configure_logging) may have raised it.
    previous_level = root.level
    if root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield checker
        # A task or future the test dropped logs its unretrieved exception when collected:
        # collect now, so the line is charged to the test that leaked it, not a later one.
        gc.collect()
    finally:
        root.removeHandler(checker)
        root.setLevel(previous_level)
    problems = checker.problems()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def expect_log(fail_on_unexpected_logs: LogChecker) -> Callable[..., ExpectedLog]:
    """``expect_log(logger, pattern="", level=logging.WARNING, required=True)``; see the module doc."""
    return fail_on_unexpected_logs.expect


@contextlib.contextmanager
def root_logging_restored() -> Iterator[logging.Logger]:
    """For a test that reconfigures the root logger (``configure_logging`` replaces its
    handlers): the handlers, this module's checker among them, and the level come back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
