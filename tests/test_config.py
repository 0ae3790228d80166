"""Settings: declared once, read from flags then environment then defaults, documented in the README.

``python -m tests.test_config`` rewrites the README's configuration table from the declarations.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import pytest

from sentri.config import (
    SETTINGS,
    Settings,
    SettingsError,
    add_setting_flags,
    load_settings,
    settings_reference,
)

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- settings-reference:start -->"
END = "<!-- settings-reference:end -->"
# The settings named as the Node backend names them (docs/settings.md §2); every other one is SENTRI_.
SPEC_NAMES = ("PORT", "DATABASE_URL", "REDIS_URL", "JWT_SECRET", "ARTIFACT_SECRET", "ARTIFACT_TOKEN_TTL_MS",
              "CORS_ORIGIN", "LOG_JSON", "LOG_LEVEL", "SSE_MAX_LISTENERS_PER_RUN", "SSE_MAX_WRITABLE_BYTES")


def readme_with_current_table(text: str) -> str:
    before, start, rest = text.partition(START)
    _, end, after = rest.partition(END)
    assert start and end, f"README.md lacks the {START} ... {END} markers"
    return before + START + "\n" + "\n".join(settings_reference()) + "\n" + END + after


def test_the_readme_configuration_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    assert text == readme_with_current_table(text), (
        "README.md's configuration table is out of date: run `python -m tests.test_config`")


def test_the_reference_table_has_one_row_per_setting_and_never_shows_a_secret_value():
    rows = settings_reference()
    assert rows[:2] == ["| Variable | Flag | Default | Description |", "|---|---|---|---|"]
    assert len(rows) == 2 + len(SETTINGS)
    for row, setting in zip(rows[2:], SETTINGS):
        assert row.startswith(f"| `{setting.name}` | `{setting.flag}` | ")
        assert row.count(" | ") == 3
        if setting.secret:
            assert "| unset |" in row


def test_every_spec_setting_exists_under_the_node_name_and_new_ones_are_prefixed():
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    assert len({setting.flag for setting in SETTINGS}) == len(SETTINGS)
    for name in SPEC_NAMES:
        assert name in names
    for name in names:
        assert name in SPEC_NAMES or name.startswith("SENTRI_"), name


def test_spec_defaults():
    settings = load_settings({})
    assert settings.port == 3001
    assert settings.sse_max_listeners_per_run == 50
    assert settings.sse_max_writable_bytes == 1_048_576
    assert settings.artifact_token_ttl_ms == 3_600_000
    assert settings.heartbeat_interval_s == 5.0
    assert settings.redis_url == "" and settings.database_url == ""


def parse_flags(*argv):
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    return parser.parse_args(list(argv))


def test_a_flag_beats_the_environment_which_beats_the_default():
    environ = {"PORT": "4000", "SSE_MAX_LISTENERS_PER_RUN": "7", "SENTRI_HEARTBEAT_INTERVAL_S": "0.5"}
    settings = load_settings(environ, parse_flags("--port", "5000"))
    assert settings.port == 5000
    assert settings.sse_max_listeners_per_run == 7
    assert settings.heartbeat_interval_s == 0.5
    assert settings.sse_max_writable_bytes == 1_048_576


def test_an_empty_environment_variable_counts_as_unset():
    assert load_settings({"PORT": ""}).port == 3001


@pytest.mark.parametrize("text, value", [("1", True), ("true", True), ("YES", True), ("on", True),
                                         ("0", False), ("false", False), ("No", False), ("off", False)])
def test_booleans_read_the_usual_spellings(text, value):
    assert load_settings({"LOG_JSON": text}).log_json is value


def test_lists_are_comma_separated_and_trimmed():
    settings = load_settings({"CORS_ORIGIN": " https://a.example , https://b.example,,"})
    assert settings.cors_origin == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"PORT": "eighty"}, "environment variable PORT: expected integer, got 'eighty'"),
        ({"PORT": "-1"}, "environment variable PORT: must be at least 0, got '-1'"),
        ({"LOG_JSON": "maybe"}, "environment variable LOG_JSON: expected boolean, got 'maybe'"),
        ({"SENTRI_HEARTBEAT_INTERVAL_S": "0"},
         "environment variable SENTRI_HEARTBEAT_INTERVAL_S: must be at least 0.001, got '0'"),
        ({"SSE_MAX_WRITABLE_BYTES": "1e6"}, "environment variable SSE_MAX_WRITABLE_BYTES: expected integer, got '1e6'"),
    ],
)
def test_a_bad_value_is_one_clear_line(environ, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    assert str(raised.value) == message


def test_a_bad_flag_value_names_the_setting_it_is_for():
    with pytest.raises(SettingsError) as raised:
        load_settings({}, parse_flags("--sse-max-listeners-per-run", "x"))
    assert str(raised.value) == "flag for SSE_MAX_LISTENERS_PER_RUN: expected integer, got 'x'"


def test_replace_changes_named_settings_and_refuses_unknown_ones():
    settings = Settings({})
    changed = settings.replace(heartbeat_interval_s=0.05)
    assert changed.heartbeat_interval_s == 0.05 and settings.heartbeat_interval_s == 5.0
    with pytest.raises(TypeError):
        settings.replace(heartbeat_interval=1)


def test_artifact_urls_are_signed_with_jwt_secret_when_artifact_secret_is_unset():
    assert Settings({"jwt_secret": "j"}).artifact_signing_secret == "j"
    assert Settings({"jwt_secret": "j", "artifact_secret": "a"}).artifact_signing_secret == "a"


def test_every_description_is_one_sentence_like_line():
    for setting in SETTINGS:
        assert setting.description and "\n" not in setting.description
        assert re.match(r"[A-Z]", setting.description), setting.name


if __name__ == "__main__":  # pragma: no cover - the README table's generator
    README.write_text(readme_with_current_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the configuration table in {README}", file=sys.stderr)
