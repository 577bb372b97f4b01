"""The README's configuration table is generated from the code and must not drift."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from search_core.config import SETTINGS_DOC, Settings

REPO = Path(__file__).resolve().parents[1]
CODE = [*sorted((REPO / "search_core").rglob("*.py")), REPO / "app.py"]
CONFIG = REPO / "search_core" / "config.py"


def test_readme_config_table_matches_the_code() -> None:
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from config_table import render

    assert render() in (REPO / "README.md").read_text(encoding="utf-8"), (
        "README.md is stale: run python tools/config_table.py --write"
    )


def _settings_used(tree: ast.AST) -> Iterator[str]:
    """Field names the code takes from a Settings: ``<...settings>.name`` (``settings``,
    ``self.settings``, ``self._settings``, ``pipeline.settings``) and ``Settings.read("name")``
    (also through a local alias ``read = Settings.read``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else ""
            owner_name = owner.id if isinstance(owner, ast.Name) else owner_name
            if owner_name.lstrip("_") == "settings":
                yield node.attr
        if (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "read")
                or (isinstance(node.func, ast.Name) and node.func.id == "read")
            )
        ):
            yield node.args[0].value


def test_every_documented_variable_is_read() -> None:
    """Each documented variable is parsed by Settings.from_env AND its value is used by some
    code outside config.py: a setting added to the table but wired to nothing fails here."""
    declared = Settings.variables()
    assert [v.name for _, v in declared] == [name for name, _, _ in SETTINGS_DOC]

    looked_up: list[str] = []

    class Recording(dict[str, str]):
        def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
            looked_up.append(key)
            return super().get(key, default)

    assert Settings.from_env(Recording()).describe()
    assert {name for name, _, _ in SETTINGS_DOC} <= set(looked_up)

    used: set[str] = set()
    for path in CODE:
        if path != CONFIG:
            used.update(_settings_used(ast.parse(path.read_text(encoding="utf-8"))))
    unread = [v.name for field, v in declared if field not in used]
    assert not unread, f"documented but no code uses the value: {unread}"


def test_no_environment_read_outside_config() -> None:
    """config.py is the only reader; server.py only sets Gradio's telemetry defaults."""
    reads = re.compile(r"os\.environ\.get|os\.getenv|os\.environ\[|environ\.items")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in CODE
        if path != CONFIG
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if reads.search(line)
    ]
    assert not offenders, offenders
