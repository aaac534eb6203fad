"""Fixtures the kvm_clone/kvm_template unit tests share: a test:///default connection and a template on it."""

from __future__ import annotations

import pytest

from tests import fakes

TPL = "ut-tpl"


@pytest.fixture
def conn():
    """test:///default; the test's ut-* domains, snapshots and networks go at teardown."""
    c, close = fakes.open_conn()
    yield c
    close()


@pytest.fixture
def tpl(conn, tmp_path):
    """A shut-off template ``ut-tpl`` on a blank qcow2 (tmp_path/base.qcow2); returns that path."""
    return fakes.make_template(conn, tmp_path, TPL)
