"""The README's configuration table is generated from the code and must not drift."""

from pathlib import Path

from search_core.config import SETTINGS_DOC, Settings

REPO = Path(__file__).resolve().parents[1]


def test_readme_config_table_matches_the_code() -> None:
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from config_table import render

    assert render() in (REPO / "README.md").read_text(encoding="utf-8"), (
        "README.md is stale: run python tools/config_table.py --write"
    )


def test_every_documented_variable_is_read() -> None:
    source = (REPO / "search_core" / "config.py").read_text(encoding="utf-8")
    server = (REPO / "search_core" / "server.py").read_text(encoding="utf-8")
    for name, _, _ in SETTINGS_DOC:
        assert f'"{name}"' in source.split("SETTINGS_DOC")[-1] or name in server, name
    from search_core.costs import PRICE_SETTINGS

    costs = (REPO / "search_core" / "costs.py").read_text(encoding="utf-8")
    for name, _, _ in PRICE_SETTINGS:
        assert f'"{name}"' in costs, name
    assert Settings.from_env().describe()
