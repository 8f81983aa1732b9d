"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback."""

from __future__ import annotations


class HepscanError(Exception):
    """Base class: the message names the file, key or branch at fault."""


class ConfigError(HepscanError, ValueError):
    """A configuration file or option is invalid (unknown key, bad value, mismatch)."""


class InputError(HepscanError):
    """An input file is unreadable, truncated, or lacks a tree/branch, or holds bad values."""


class OutputError(HepscanError):
    """The output location cannot be written."""
