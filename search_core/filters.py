"""Result filters shared by every surface (UI, CLI ``--filter``, REST ``filter``) and backend.

A filter is a dict: ``category`` (top folder, exact), ``label`` (class folder, exact), ``tags``
(a list: the item must carry at least one of them) and ``source_prefix`` (the item's URI must
start with it). The local index applies :func:`matches`; OpenSearch turns the same dict into
an efficient k-NN ``filter`` clause (``search_core.aws.opensearch_index._filter_clause``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from search_core.errors import SearchError
from search_core.types import ItemMeta

KEYS = ("category", "label", "tags", "source_prefix")


def parse_filters(pairs: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings → a filter dict. Keys: ``category``, ``label``, ``tag`` (each
    repeatable: any of), ``source`` (a URI prefix, once). SearchError names what is wrong."""
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise SearchError(f"a filter must look like key=value, got {pair!r}")
        if key in {"tag", "tags"}:
            filters.setdefault("tags", []).append(value)
        elif key in {"source", "source_prefix", "prefix"}:
            if filters.get("source_prefix", value) != value:
                raise SearchError("give source= (a URI prefix) once")
            filters["source_prefix"] = value
        elif key in {"category", "label"}:
            # repeated: any of them, like tag= (the last one used to win silently)
            previous = filters.get(key)
            if previous is None:
                filters[key] = value
            else:
                values = previous if isinstance(previous, list) else [previous]
                filters[key] = values if value in values else [*values, value]
        else:
            raise SearchError(
                f"unknown filter {key!r}: use category=, label=, tag= or source= (a URI prefix)"
            )
    return filters


def matches(item: ItemMeta, filters: dict[str, Any]) -> bool:
    """Whether ``item`` passes every filter (lists mean "any of"; list-valued fields such as
    tags pass when they share a value with the wanted ones)."""
    for key, wanted in filters.items():
        if wanted is None:
            continue
        if key == "source_prefix":
            if not item.uri.startswith(str(wanted)):
                return False
            continue
        value = getattr(item, key) if key in ItemMeta.__dataclass_fields__ else item.extra.get(key)
        allowed = set(wanted) if isinstance(wanted, list | tuple | set | frozenset) else {wanted}
        present = set(value) if isinstance(value, list | tuple) else {value}
        if not allowed & present:
            return False
    return True
