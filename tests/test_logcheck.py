"""A WARNING nobody expected fails the test; an expected one must really be logged.

The subject tests below run once, together, in a child pytest using the plugin exactly as
tests/conftest.py does; each test here reads the outcome and report of its own subject.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Tuple

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.logcheck import expect_log, fail_on_unexpected_logs  # noqa: F401
"""

SUBJECTS = '''
import logging, threading

def test_unexpected_warning():
    logging.getLogger("sentri.hub").warning("stream %s is too slow", "s-1")

def test_error_from_another_thread():
    worker = threading.Thread(target=lambda: logging.getLogger("sentri.store").error("db gone"))
    worker.start(); worker.join()

def test_info_line():
    logging.getLogger("sentri").info("listening")

def test_expected_inside_block(expect_log):
    with expect_log("sentri.bus", r"relay (dis)?connected"):
        logging.getLogger("sentri.bus.redis").warning("relay disconnected")

def test_expected_never_comes(expect_log):
    with expect_log("sentri.bus", r"relay disconnected"):
        pass

def test_expectation_for_whole_test(expect_log):
    expect_log("sentri.hub", r"too slow")

def test_expectation_scope(expect_log):
    expect_log("sentri.bus", r"disconnected", level=logging.ERROR, required=False)
    logging.getLogger("sentri.business").error("disconnected")   # another logger
    logging.getLogger("sentri.bus").warning("disconnected")     # below the level
    logging.getLogger("sentri.bus").error("connected")          # other text
    logging.getLogger("sentri.bus").error("disconnected")       # the one allowed

def test_leaks_a_failed_task():
    import asyncio
    async def fail():
        raise RuntimeError("nobody awaited me")
    loop = asyncio.new_event_loop()
    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    holder = {"task": task}
    holder["self"] = holder  # a cycle: only the garbage collector frees the task

def test_runs_after_the_leak():
    pass

def test_line_after_block(expect_log):
    with expect_log("sentri", r"gone"):
        logging.getLogger("sentri").warning("gone")
    logging.getLogger("sentri").warning("gone")
'''


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> Dict[str, Tuple[str, str]]:
    """Per subject test: its outcome (passed, failed, error) and every report text it produced."""
    folder = tmp_path_factory.mktemp("logcheck")
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_subjects.py").write_text(SUBJECTS)
    report = folder / "report.xml"
    # Only the plugin under test: no pytest-tornado, and the project importable as "tests".
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "--rootdir", str(folder),
         f"--junitxml={report}", str(folder / "test_subjects.py")],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False,
    )
    results: Dict[str, Tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        texts = " ".join(child.text or "" for child in case)
        kinds = {child.tag for child in case} & {"failure", "error"}
        outcome = "error" if "error" in kinds else "failed" if "failure" in kinds else "passed"
        results[name] = (outcome, texts)
    return results


def report_of(outcomes, name, outcome):
    """The report text of subject test ``name``, which must have ended with ``outcome``."""
    assert outcomes[name][0] == outcome, outcomes[name]
    return outcomes[name][1]


def test_an_unexpected_warning_fails_the_test_and_names_the_line(outcomes):
    text = report_of(outcomes, "test_unexpected_warning", "error")
    assert "unexpected log line: WARNING sentri.hub: stream s-1 is too slow" in text


def test_an_error_logged_from_another_thread_fails_the_test(outcomes):
    text = report_of(outcomes, "test_error_from_another_thread", "error")
    assert "unexpected log line: ERROR sentri.store: db gone" in text


def test_info_lines_are_not_checked(outcomes):
    assert outcomes["test_info_line"] == ("passed", "")


def test_an_expected_line_inside_its_block_passes(outcomes):
    assert outcomes["test_expected_inside_block"] == ("passed", "")


def test_an_expected_line_that_never_comes_fails_the_test(outcomes):
    text = report_of(outcomes, "test_expected_never_comes", "failed")
    assert "expected a log line that was never written: WARNING+ on sentri.bus matching 'relay disconnected'" in text


def test_an_expectation_for_the_whole_test_is_checked_at_teardown(outcomes):
    text = report_of(outcomes, "test_expectation_for_whole_test", "error")
    assert "expected a log line that was never written: WARNING+ on sentri.hub matching 'too slow'" in text


def test_an_expectation_matches_only_its_logger_its_level_and_its_text(outcomes):
    text = report_of(outcomes, "test_expectation_scope", "error")
    assert "unexpected log line: ERROR sentri.business: disconnected" in text
    assert "unexpected log line: WARNING sentri.bus: disconnected" in text
    assert "unexpected log line: ERROR sentri.bus: connected" in text
    assert "ERROR sentri.bus: disconnected" not in text


def test_a_line_after_its_block_is_unexpected_again(outcomes):
    text = report_of(outcomes, "test_line_after_block", "error")
    assert text.count("unexpected log line: WARNING sentri: gone") == 1


def test_a_task_error_nobody_retrieved_is_charged_to_the_test_that_dropped_the_task(outcomes):
    text = report_of(outcomes, "test_leaks_a_failed_task", "error")
    assert "unexpected log line: ERROR asyncio: Task exception was never retrieved" in text
    assert outcomes["test_runs_after_the_leak"] == ("passed", "")


def test_the_check_watches_this_suite_too(fail_on_unexpected_logs, expect_log):
    assert fail_on_unexpected_logs in logging.getLogger().handlers
    with expect_log("tests.logcheck", r"checked") as expected:
        logging.getLogger("tests.logcheck").warning("checked")
    assert expected.matched == 1
    assert fail_on_unexpected_logs.unexpected == []
