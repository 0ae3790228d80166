"""deploy/: the files an operator copies stay true to the code (settings, drain window, nginx syntax)."""

from __future__ import annotations

import configparser
import os
import re

from sentri.config import SETTINGS, SETTINGS_BY_NAME
from sentri.envexample import render

from .cluster import DEPLOY, Nginx


def read(*parts):
    with open(os.path.join(DEPLOY, *parts), encoding="utf-8") as handle:
        return handle.read()


def test_the_environment_file_example_is_generated_from_the_settings():
    assert read("sentri.env.example") == render(), "run: python -m sentri.envexample > deploy/sentri.env.example"


def test_the_environment_file_example_names_every_setting_exactly_once():
    names = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", read("sentri.env.example"), re.M)
    assert sorted(names) == sorted(setting.name for setting in SETTINGS)


def test_the_systemd_unit_stops_later_than_the_drain_window_and_raises_the_fd_limit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(read("systemd", "sentri@.service"))
    service = unit["Service"]
    assert service["Environment"] == "PORT=%i"
    assert service["ExecStart"].endswith("sentri serve")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["LimitNOFILE"]) >= 65536
    drain_window = SETTINGS_BY_NAME["SENTRI_DRAIN_WINDOW_S"].default
    publish_wait = SETTINGS_BY_NAME["SENTRI_SHUTDOWN_PUBLISH_WAIT_S"].default
    assert int(service["TimeoutStopSec"]) > drain_window + publish_wait + 10


def test_the_nginx_config_as_rendered_for_tests_passes_nginx_t(tmp_path):
    nginx = Nginx(str(tmp_path), [3001, 3002], str(tmp_path))
    result = nginx.test_config()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_the_nginx_site_streams_unbuffered_over_http_1_1_with_connection_cleared():
    site = read("nginx", "sentri.conf")
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_set_header X-Real-IP $remote_addr;",
                      "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"):
        assert directive in site, directive
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))
    assert read_timeout >= 10 * SETTINGS_BY_NAME["SENTRI_HEARTBEAT_INTERVAL_S"].default
    assert "$request " not in site and "$request_uri" not in site and "$args" not in site  # no query strings
    assert re.search(r"worker_shutdown_timeout \d+s;", read("nginx", "nginx.conf"))


def test_a_list_default_is_shown_comma_separated_and_an_empty_one_as_nothing():
    from sentri.config import Setting
    from sentri.envexample import shown_default

    cors = SETTINGS_BY_NAME["CORS_ORIGIN"]
    assert shown_default(cors) == ""
    two = Setting("SENTRI_EXAMPLE_LIST", cors.parse, ("https://a.example", "https://b.example"), "Two origins.")
    assert shown_default(two) == "https://a.example,https://b.example"
