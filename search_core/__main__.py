"""``python -m search_core``: see :mod:`search_core.cli`."""

from search_core.cli import main

raise SystemExit(main())
