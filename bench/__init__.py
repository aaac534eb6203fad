"""The benchmarks as a package, run from the repo root: ``python -m bench.<name>`` (see README.md).

They use the test helpers as the package ``tests`` (``from tests import guestlib``) and each other as
``bench.<name>``; importing this package puts the collection (``.collections``, made by
scripts/setup.sh) on ``sys.path`` once, as tests/conftest.py does for the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

_COLLECTIONS = str(Path(__file__).resolve().parent.parent / ".collections")
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
