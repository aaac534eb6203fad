from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import the collection as ansible_collections.virtops.kvm (setup.sh makes the link).
sys.path.insert(0, str(ROOT / ".collections"))
# The test helpers are the package ``tests`` (``from tests import guestlib``): the repo root, not tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
