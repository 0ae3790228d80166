"""Parsing JSON that comes from outside the process (HTTP bodies, Redis, database columns, CLI).

``json.loads`` recurses once per level of nesting: a body of 100,000 ``[`` makes it raise
``RecursionError``, which no caller expects from a parser, and how deep a value may be and
still parse, or be encoded again later (``json.dumps``, the pure-Python encoder of
``sentri.sse.dumps_js``, a recursive walk), depends on the Python version and on how deep the
stack already is. So every parse of untrusted text goes through ``loads`` here: anything
nested deeper than ``MAX_DEPTH`` levels of arrays and objects raises ``TooDeepError``, a
``ValueError``, so each caller's existing "not valid JSON" path takes it. Events are held to the same bound
(``too_deep``) wherever they are published, so whatever one instance accepts, every other
instance can read back and re-encode.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from typing import Any, Union

# Levels of nested arrays and objects, the outermost one included: {"a":[1]} is 2 levels.
# Real events and run columns use a handful; 64 leaves room and stays far below the
# recursion limit of json.dumps and of the pure-Python encoder (sentri.sse.dumps_js).
MAX_DEPTH = 64

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_CONTAINERS = (dict, list, tuple)


class TooDeepError(ValueError):
    """JSON nested deeper than the bound; the message names the bound, never the input."""

    def __init__(self, max_depth: int = MAX_DEPTH, bound: str = "") -> None:
        super().__init__(f"JSON nested deeper than {bound or f'{max_depth} levels'}")
        self.max_depth = max_depth


def text_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, without parsing it (no recursion).

    Brackets inside strings do not count. For text that is not JSON the answer is only an
    estimate, which is all the callers need: such text is refused either way.
    """
    brackets = _NOT_A_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(map(_STEP.__getitem__, brackets))))


def nests_deeper(data: Union[str, bytes], max_depth: int = MAX_DEPTH) -> bool:
    """Whether JSON text (bytes: UTF-8) nests deeper than ``max_depth``; cheap for most text."""
    # Cheap first: too few opening brackets cannot nest that deep (brackets in strings counted too).
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= max_depth:
            return False
        return text_depth(data) > max_depth
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    return text_depth(data.decode("utf-8", "replace")) > max_depth


class DeepInputLog:
    """Counts input ignored for its nesting and logs a warning for the first one only, so a
    producer sending thousands of them writes one line (it names no content: the input may
    hold anything)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.count = 0

    def ignored(self, count: int = 1) -> None:
        if self.count == 0 and count > 0:
            self.logger.warning("ignored %s nested deeper than %d levels (logged once; later ones are only counted)",
                                self.what, MAX_DEPTH)
        self.count += count


def loads(data: Union[str, bytes, bytearray], max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted text: ``ValueError`` for anything that is not JSON nested
    at most ``max_depth`` levels (``TooDeepError`` when it is the nesting); ``TypeError`` for
    an argument that is not text, as ``json.loads`` raises."""
    if isinstance(data, (bytes, bytearray)):
        # The hot path (every relayed message): parsed as bytes, no copy. In UTF-8, -16 and -32
        # every "[" and "{" holds its byte, so too few such bytes cannot nest too deep; past
        # that, the depth is measured on the text json.loads would parse (a bad byte is a
        # UnicodeDecodeError, a ValueError).
        if data.count(b"[") + data.count(b"{") > max_depth:
            text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
            if text_depth(text) > max_depth:
                raise TooDeepError(max_depth)
    elif isinstance(data, str):
        if nests_deeper(data, max_depth):
            raise TooDeepError(max_depth)
    else:
        raise TypeError(f"the JSON object must be str or bytes, not {type(data).__name__}")
    try:
        return json.loads(data)
    except RecursionError:  # only reachable with a max_depth beyond what the parser can do
        raise TooDeepError(max_depth, "json.loads can read") from None


def too_deep(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether a decoded value nests arrays and objects (lists, tuples, dicts) deeper than
    ``max_depth`` levels; walks without recursion and stops at the first level too many."""
    level = [value]  # the values inside as many containers as iterations so far
    for _ in range(max_depth):
        level = [child for container in level if isinstance(container, _CONTAINERS)
                 for child in (container.values() if isinstance(container, dict) else container)]
        if not level:
            return False
    return any(isinstance(child, _CONTAINERS) for child in level)


__all__ = ["MAX_DEPTH", "DeepInputLog", "TooDeepError", "loads", "nests_deeper", "text_depth", "too_deep"]
