"""Shared by the tests that build tiny training configs in code."""

from __future__ import annotations

import copy


def with_changes(data: dict, changes: dict) -> dict:
    """A copy of config ``data`` with ``changes``: ``"section.key": value`` sets one key of a
    section, ``"section": value`` replaces the whole section (or a top-level key)."""
    data = copy.deepcopy(data)
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[section] = value
    return data
