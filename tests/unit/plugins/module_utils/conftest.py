"""Fixtures shared by the module_utils unit tests: libvirt's test:///default driver, no daemon."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection

URI = "test:///default"


@pytest.fixture(scope="module")
def keeper():
    """One test:///default connection per test file: that driver keeps its state only while one is open."""
    c = Connection(URI)
    assert c.conn is not None
    yield c
    c.close()


@pytest.fixture
def conn(keeper):
    return keeper.conn
