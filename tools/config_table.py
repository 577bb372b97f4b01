"""Prints the README's configuration table from the settings declared in search_core/config.py.

`tests/test_docs.py` fails when README.md and the code disagree; fix with
`python tools/config_table.py --write`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_core.config import SETTINGS_DOC

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"


def render() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [
        f"| `{name}` | `{default}` | {meaning} |"
        for name, default, meaning in SETTINGS_DOC
    ]
    return "\n".join(rows)


def replace_in(text: str) -> str:
    block = f"{BEGIN}\n{render()}\n{END}"
    return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    if args.write:
        README.write_text(replace_in(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
