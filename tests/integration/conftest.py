"""Shared fixtures of the integration tests (real qemu:///system, qcow2, libguestfs).

Fixtures (names are stable; other test files rely on them):

``guest`` (session)
    The test guest built by ``playbooks/files/build_test_guest.py`` (cached): a dict with
    ``dir``, ``kernel``, ``initrd``, ``base`` (bootable qcow2, never written by tests:
    boot overlays of it), ``template`` / ``kernel_template`` (domain XML), ``hostname``
    (``virtops-base``), ``marker``, ``boot_log``, ``cmdline``, ``built``, ...
    Build domain XML for it with ``guestlib.domain_xml(name, disk, serial_log, kind)``.
``conn`` (session)
    An open ``libvirt.virConnect`` to ``qemu:///system`` (or ``$LIBVIRT_DEFAULT_URI``),
    closed at the end of the session. If the daemon cannot be reached the tests
    FAIL (error), they do not skip: CI starts libvirtd before running them.
``prefix`` (function)
    A unique name prefix ``vt-xxxxxxxx`` for the domains and files of one test. At
    teardown every domain whose name starts with it is destroyed and undefined
    (NVRAM, managed save, snapshot metadata too) and its scratch dir is removed.
``scratch`` (function)
    ``/var/lib/libvirt/images/virtops-test/<prefix>`` (a ``pathlib.Path``, mode 0755 so
    libvirt-qemu can traverse it): put overlays, serial logs and other files there.
``tpl`` (function)
    A shut-off template domain ``<prefix>-tpl`` on a private copy of the guest's base
    (``<scratch>/tpl.qcow2``, 192 MiB): ``dict(name, disk, xml)`` (``guestlib.define_template``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import guestlib


@pytest.fixture(scope="session")
def guest() -> dict:
    """The cached test guest (see the module docstring); built on first use (~1 min)."""
    return guestlib.build_guest()


@pytest.fixture(scope="session")
def conn() -> Iterator[object]:
    """A qemu:///system libvirt connection; an unreachable daemon fails the tests loudly."""
    import libvirt

    uri = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        pytest.fail(
            f"cannot connect to {uri}: {exc}. The integration tests need a running libvirtd; "
            "start it with `bash scripts/libvirt-daemons.sh start` (scripts/test.sh does).",
            pytrace=False,
        )
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def prefix(conn) -> Iterator[str]:
    """A unique domain/file name prefix; its domains and scratch dir are removed at teardown."""
    value = guestlib.new_prefix()
    try:
        yield value
    finally:
        try:
            guestlib.cleanup_domains(conn, value)
        finally:
            guestlib.remove_scratch(value)


@pytest.fixture
def scratch(prefix) -> Path:
    """The scratch directory of ``prefix`` (mode 0755), removed by ``prefix``'s teardown."""
    return guestlib.make_scratch(prefix)


@pytest.fixture
def tpl(conn, guest, prefix, scratch) -> dict:
    """A shut-off template on a private copy of the bootable base (see the module docstring)."""
    return guestlib.define_template(conn, guest["base"], scratch, prefix)
