"""The services a handler needs, built once by the application and handed to each handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .bus import Bus
from .config import Settings
from .connect_reads import VerifiedTokens
from .event_intake import Publisher
from .hub import Hub
from .memory import MemoryTrimmer, glibc_malloc_trim
from .metrics import Metrics
from .revocation import Revocations
from .store import Store


@dataclass
class Context:
    settings: Settings
    store: Store
    hub: Hub
    bus: Bus
    instance_id: str
    revocations: Revocations = field(default_factory=Revocations)
    tokens: VerifiedTokens = field(init=False)  # verified tokens remembered until their exp
    memory_trimmer: MemoryTrimmer = field(init=False)  # freed heap back to the system (sentri.memory)
    draining: bool = False
    publish_token: Optional[str] = None
    metrics: Optional[Metrics] = None
    publisher: Optional[Publisher] = None  # every publisher's way in (sentri.event_intake); set by build_context

    def __post_init__(self) -> None:
        self.tokens = VerifiedTokens(self.settings.jwt_secret)
        self.memory_trimmer = MemoryTrimmer(self.settings.memory_trim_interval_s, glibc_malloc_trim())
