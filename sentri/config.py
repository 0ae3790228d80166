"""Every setting, declared once: name, type, default, unit and description.

Names are the Node backend's where it has one (docs/settings.md §1), so one environment file serves
both; settings new to this project are prefixed ``SENTRI_``. Each setting is also a
command-line flag derived from its name (``SSE_MAX_WRITABLE_BYTES`` -> ``--sse-max-writable-bytes``,
``SENTRI_HEARTBEAT_INTERVAL_S`` -> ``--heartbeat-interval-s``). A flag beats the environment.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message is one clear line."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_list(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    description: str
    secret: bool = False
    minimum: Optional[float] = None

    @property
    def attribute(self) -> str:
        name = self.name.lower()
        return name[len("sentri_"):] if name.startswith("sentri_") else name

    @property
    def flag(self) -> str:
        return "--" + self.attribute.replace("_", "-")

    @property
    def type_name(self) -> str:
        return {int: "integer", float: "number", _parse_bool: "boolean", _parse_list: "list"}.get(
            self.parse, "string"
        )


SETTINGS: Tuple[Setting, ...] = (
    Setting("PORT", int, 3001, "TCP port the server listens on.", minimum=0),
    Setting("SENTRI_HOST", str, "127.0.0.1", "Address the server binds (0.0.0.0 for all interfaces)."),
    Setting(
        "DATABASE_URL",
        str,
        "",
        "Database: unset for the SQLite file SENTRI_DATA_DIR/sentri.db, sqlite:///path/file.db, "
        "or postgres://user:pass@host:port/db.",
        secret=True,
    ),
    Setting("SENTRI_DATA_DIR", str, "data", "Folder for the default SQLite database (created when missing)."),
    Setting("REDIS_URL", str, "", "Redis for the relay between instances; unset: single instance.", secret=True),
    Setting("JWT_SECRET", str, "", "HMAC secret of Sentri's HS256 access tokens (required by serve).", secret=True),
    Setting(
        "ARTIFACT_SECRET",
        str,
        "",
        "HMAC secret for signed artifact URLs; unset: JWT_SECRET.",
        secret=True,
    ),
    Setting("ARTIFACT_TOKEN_TTL_MS", int, 3_600_000, "Lifetime of a signed artifact URL, in milliseconds.", minimum=1),
    Setting(
        "CORS_ORIGIN", _parse_list, (), "Comma-separated browser origins allowed to open streams with credentials."
    ),
    Setting("LOG_JSON", _parse_bool, False, "Write logs as one JSON object per line."),
    Setting("LOG_LEVEL", str, "info", "Log level: debug, info, warn, error."),
    Setting(
        "SSE_MAX_LISTENERS_PER_RUN", int, 50, "Open streams allowed per run on one instance; beyond: 503.", minimum=1
    ),
    Setting(
        "SSE_MAX_WRITABLE_BYTES",
        int,
        1_048_576,
        "Unsent bytes a stream may hold before it is disconnected as too slow, in bytes.",
        minimum=1,
    ),
    Setting(
        "SENTRI_STREAM_KERNEL_UNSENT_BYTES",
        int,
        16_384,
        "Bytes not yet sent a stream's socket may queue in the kernel (TCP_NOTSENT_LOWAT); the rest waits "
        "in the server, where a newer screencast frame replaces an older one and SSE_MAX_WRITABLE_BYTES counts "
        "it. 0: the kernel's default (up to tcp_wmem's maximum, megabytes).",
        minimum=0,
    ),
    Setting("SENTRI_HEARTBEAT_INTERVAL_S", float, 5.0, "Seconds between ': heartbeat' comments.", minimum=0.001),
    Setting(
        "SENTRI_DB_WORKERS",
        int,
        4,
        "Threads (each with its own pooled connection) running database lookups.",
        minimum=1,
    ),
    Setting("SENTRI_INSTANCE_ID", str, "", "Unique id of this process on the relay; unset: generated at start."),
    Setting(
        "SENTRI_GC_THRESHOLD",
        int,
        5000,
        "Allocations between young-generation garbage collections; objects alive at start-up are "
        "frozen out of collections. Larger: fewer and shorter pauses; a stream's connect leaves no "
        "cyclic garbage, so RSS per stream does not grow with it.",
        minimum=1,
    ),
    Setting(
        "SENTRI_MEMORY_TRIM_INTERVAL_S",
        float,
        30.0,
        "Seconds between returns of freed heap memory to the system (glibc's malloc_trim, on a worker "
        "thread), so RSS comes back down after a reconnect storm's peak. 0: never.",
        minimum=0,
    ),
    # The Redis relay (README "Several instances (Redis)").
    Setting("SENTRI_RELAY_SUBSCRIBE_TIMEOUT_S", float, 1.0,
            "Seconds a new stream waits for Redis to confirm its run's subscription before reading the run.",
            minimum=0),
    Setting("SENTRI_RELAY_RETRY_MAX_S", float, 10.0,
            "Longest wait between attempts to reach Redis, in seconds (exponential, jittered backoff).",
            minimum=0.05),
    Setting("SENTRI_RELAY_PING_INTERVAL_S", float, 5.0,
            "Seconds of silence after which the relay PINGs Redis; three without a reply: reconnect.", minimum=0.01),
    Setting("SENTRI_RELAY_MAX_PENDING_BYTES", int, 16_777_216,
            "Bytes of events waiting to be published to a slow Redis before new ones are dropped.", minimum=1),
    Setting("SENTRI_REDIS_CLUSTER_NODE_COMPAT", _parse_bool, False,
            "On a Redis Cluster: also PUBLISH events classic and subscribe run channels classic, so Node "
            "instances and this project's see each other's events (classic messages go to every node)."),
    Setting("SENTRI_REVOCATION_CHECK_TIMEOUT_S", float, 0.5,
            "Seconds a connect waits for Redis to say whether its token is revoked (no answer: accepted).",
            minimum=0.001),
    Setting(
        "SENTRI_DRAIN_WINDOW_S",
        float,
        10.0,
        "On SIGTERM/SIGINT, seconds over which open streams are ended (spread, so clients do not reconnect together).",
        minimum=0,
    ),
    Setting(
        "SENTRI_SHUTDOWN_PUBLISH_WAIT_S",
        float,
        5.0,
        "After the drain, seconds the publishes already taken get to be stored and delivered; the ones "
        "still queued then are refused (503, nothing stored).",
        minimum=0,
    ),
    Setting(
        "SENTRI_MAX_STREAM_AGE_S",
        float,
        3600.0,
        "Seconds after which a stream is ended so its client reconnects and resumes (jittered by up to 10%); "
        "0: unlimited.",
        minimum=0,
    ),
    Setting(
        "SENTRI_METRICS_TOKEN",
        str,
        "",
        "Bearer token required by GET /metrics (Prometheus text); unset: /metrics is disabled (404).",
        secret=True,
    ),
    Setting("SENTRI_READY_TIMEOUT_S", float, 1.0, "Seconds /readyz waits for the database ping before failing.",
            minimum=0.001),
    # Resume and event ids (README "Resume and event ids" explains the sizes).
    Setting("SENTRI_HISTORY_MAX_EVENTS", int, 1000,
            "Events kept per run for Last-Event-ID resume (Redis: the stream's approximate MAXLEN).", minimum=1),
    Setting("SENTRI_HISTORY_MAX_BYTES", int, 8_388_608,
            "Bytes of event JSON kept per run in the in-process history (oldest dropped first).", minimum=1),
    Setting("SENTRI_HISTORY_MAX_RUNS", int, 2000,
            "Runs whose history the in-process history keeps (least recently active dropped first).", minimum=1),
    Setting("SENTRI_HISTORY_DONE_TTL_S", float, 600.0,
            "Seconds a run's history is kept after its done (a reconnect then gets 204).", minimum=0),
    Setting("SENTRI_HISTORY_IDLE_TTL_S", float, 86400.0,
            "Seconds a run's history is kept after its last event when no done comes.", minimum=1),
    Setting("SENTRI_RETRY_MS", int, 3000,
            "The retry: reconnection delay sent first on every stream, in milliseconds; 0: none.", minimum=0),
    Setting("SENTRI_RETRY_JITTER_MS", int, 2000,
            "Random extra milliseconds added to SENTRI_RETRY_MS per connection, so reconnects spread.", minimum=0),
    Setting("SENTRI_PUBLISH_TOKEN", str, "",
            "Bearer secret of POST /api/v1/runs/{runId}/events (HTTP publish); unset: that endpoint is 404.",
            secret=True),
    Setting("SENTRI_PUBLISH_MAX_BYTES", int, 1_048_576,
            "Largest HTTP publish request body, in bytes (one event or a batch); larger: 413.", minimum=2),
    Setting("SENTRI_PUBLISH_MAX_EVENTS", int, 1000,
            "Most events in one HTTP publish request (a JSON array or NDJSON batch); more: 413.", minimum=1),
    Setting("SENTRI_PUBLISH_MAX_EVENT_BYTES", int, 262_144,
            "Largest event of an HTTP publish request, in bytes of its JSON; larger: 413 naming its index.",
            minimum=2),
)

SETTINGS_BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


class Settings:
    """Resolved values, one attribute per setting (``settings.heartbeat_interval_s``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        for setting in SETTINGS:
            setattr(self, setting.attribute, values.get(setting.attribute, setting.default))

    def replace(self, **changes: Any) -> Settings:
        values = {setting.attribute: getattr(self, setting.attribute) for setting in SETTINGS}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update(changes)
        return Settings(values)

    @property
    def artifact_signing_secret(self) -> str:
        return str(self.artifact_secret or self.jwt_secret)

    def __getattr__(self, name: str) -> Any:  # only reached for unknown names; keeps mypy honest
        raise AttributeError(name)


def _convert(setting: Setting, raw: str, source: str) -> Any:
    try:
        value = setting.parse(raw)
    except ValueError:
        raise SettingsError(f"{source} {setting.name}: expected {setting.type_name}, got {raw!r}") from None
    if setting.minimum is not None and value < setting.minimum:
        raise SettingsError(f"{source} {setting.name}: must be at least {setting.minimum:g}, got {raw!r}")
    return value


def add_setting_flags(parser: argparse.ArgumentParser, settings: Sequence[Setting] = SETTINGS) -> None:
    group = parser.add_argument_group("settings (each also read from the environment variable named)")
    for setting in settings:
        default = "unset" if setting.default in ("", ()) else setting.default
        group.add_argument(
            setting.flag,
            dest=setting.attribute,
            metavar=setting.type_name.upper(),
            default=None,
            # argparse expands %-formats in help text: a literal % must be written %%.
            help=f"{setting.description} [env {setting.name}; default {default}]".replace("%", "%%"),
        )


def load_settings(environ: Mapping[str, str], flags: Optional[argparse.Namespace] = None) -> Settings:
    """Resolve every setting: flag, else environment variable, else default."""
    values: Dict[str, Any] = {}
    for setting in SETTINGS:
        flag_value = getattr(flags, setting.attribute, None) if flags is not None else None
        if flag_value is not None:
            values[setting.attribute] = _convert(setting, flag_value, "flag for")
        elif environ.get(setting.name) not in (None, ""):
            values[setting.attribute] = _convert(setting, environ[setting.name], "environment variable")
    return Settings(values)


def settings_reference() -> List[str]:
    """The README's configuration table, generated from the declarations above."""
    rows = ["| Variable | Flag | Default | Description |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default
        if isinstance(default, bool):  # written as the environment spells it
            default = "true" if default else "false"
        shown = "unset" if default in ("", ()) else f"`{default}`"
        description = setting.description.replace("|", "\\|")  # a bare | would split the cell
        rows.append(f"| `{setting.name}` | `{setting.flag}` | {shown} | {description} |")
    return rows


def from_environment() -> Settings:
    return load_settings(os.environ)
