"""Fixtures of the operator tests.

The operator's packages are imported from this checkout (a git worktree may sit beside an
editable install of another checkout), and the operator subprocess gets the same path.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = [str(REPO_ROOT / d) for d in ("api", "cli", "operator", "trainer")]
for _dir in reversed(SOURCE_DIRS):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)
