"""Sentri live: the run-event stream tier (Server-Sent Events)."""

__version__ = "0.1.0"
