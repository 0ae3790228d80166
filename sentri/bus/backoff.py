"""How long the relay waits before its next attempt to reach Redis. Pure arithmetic.

Capped exponential growth with "equal jitter": half the step is fixed, half random, so a
fleet of instances that lost Redis together does not return to it in lockstep, and no
instance retries in a tight loop (full jitter could draw zero).
"""

from __future__ import annotations

import random
from typing import Callable, Optional


class Backoff:
    def __init__(self, base_s: float, cap_s: float, uniform: Optional[Callable[[float, float], float]] = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._uniform = uniform or random.uniform

    def step(self, attempt: int) -> float:
        """The un-jittered delay of an attempt (0-based): base * 2**attempt, at most the cap."""
        if attempt >= 64:  # 2**64 * base is past any cap; avoid huge floats
            return self.cap_s
        return min(self.cap_s, self.base_s * 2.0 ** max(0, attempt))

    def compute(self, attempt: int) -> float:
        step = self.step(attempt)
        return step / 2 + self._uniform(0.0, step / 2)
