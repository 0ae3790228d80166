"""A WARNING nobody expected fails the test; an expected one must really be logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.logcheck import expect_log, fail_on_unexpected_logs  # noqa: F401
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """A throwaway test folder using the plugin exactly as tests/conftest.py does."""
    # Only the plugin under test: no pytest-tornado, no coverage of the subject.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("COV_CORE_SOURCE", raising=False)
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    return pytester


def run(suite: pytest.Pytester, source: str) -> pytest.RunResult:
    suite.makepyfile(test_subject=source)
    return suite.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-W", "error")


def test_an_unexpected_warning_fails_the_test_and_names_the_line(suite):
    result = run(suite, """
import logging
def test_subject():
    logging.getLogger("sentri.hub").warning("stream %s is too slow", "s-1")
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*unexpected log line: WARNING sentri.hub: stream s-1 is too slow*"])


def test_an_error_logged_from_another_thread_fails_the_test(suite):
    result = run(suite, """
import logging, threading
def test_subject():
    worker = threading.Thread(target=lambda: logging.getLogger("sentri.store").error("db gone"))
    worker.start(); worker.join()
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*unexpected log line: ERROR sentri.store: db gone*"])


def test_info_lines_are_not_checked(suite):
    result = run(suite, """
import logging
def test_subject():
    logging.getLogger("sentri").info("listening")
""")
    result.assert_outcomes(passed=1)


def test_an_expected_line_inside_its_block_passes(suite):
    result = run(suite, """
import logging
def test_subject(expect_log):
    with expect_log("sentri.bus", r"relay (dis)?connected"):
        logging.getLogger("sentri.bus.redis").warning("relay disconnected")
""")
    result.assert_outcomes(passed=1)


def test_an_expected_line_that_never_comes_fails_the_test(suite):
    result = run(suite, """
def test_subject(expect_log):
    with expect_log("sentri.bus", r"relay disconnected"):
        pass
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected a log line that was never written: WARNING+ on sentri.bus*"])


def test_an_expectation_for_the_whole_test_is_checked_at_teardown(suite):
    result = run(suite, """
def test_subject(expect_log):
    expect_log("sentri.hub", r"too slow")
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*expected a log line that was never written: WARNING+ on sentri.hub*"])


def test_an_expectation_matches_only_its_logger_its_level_and_its_text(suite):
    result = run(suite, """
import logging
def test_subject(expect_log):
    expect_log("sentri.bus", r"disconnected", level=logging.ERROR, required=False)
    logging.getLogger("sentri.business").error("disconnected")   # another logger
    logging.getLogger("sentri.bus").warning("disconnected")     # below the level
    logging.getLogger("sentri.bus").error("connected")          # other text
    logging.getLogger("sentri.bus").error("disconnected")       # the one allowed
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*unexpected log line: ERROR sentri.business: disconnected*",
        "*unexpected log line: WARNING sentri.bus: disconnected*",
        "*unexpected log line: ERROR sentri.bus: connected*",
    ])
    assert "ERROR sentri.bus: disconnected" not in result.stdout.str()


def test_a_line_after_its_block_is_unexpected_again(suite):
    result = run(suite, """
import logging
def test_subject(expect_log):
    with expect_log("sentri", r"gone"):
        logging.getLogger("sentri").warning("gone")
    logging.getLogger("sentri").warning("gone")
""")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*unexpected log line: WARNING sentri: gone*"])


def test_the_check_watches_this_suite_too(fail_on_unexpected_logs, expect_log):
    assert fail_on_unexpected_logs in logging.getLogger().handlers
    with expect_log("tests.logcheck", r"checked") as expected:
        logging.getLogger("tests.logcheck").warning("checked")
    assert expected.matched == 1
    assert fail_on_unexpected_logs.unexpected == []
