"""Fixtures of the _guestfs unit tests (the fakes themselves are in tests/fakes.py)."""

from __future__ import annotations

import libvirt
import pytest

from tests import fakes


@pytest.fixture
def testconn():
    """(test:///default connection, the domains the test defined); the managers' connections closed at the end."""
    conn = libvirt.open("test:///default")
    created = []
    yield conn, created
    fakes.close_managers(created)
    conn.close()
