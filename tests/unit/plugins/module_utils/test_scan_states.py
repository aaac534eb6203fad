"""HostScan.take reads every domain's state, activity and persistence in three calls, not three per domain.

libvirt's test:///default driver (its running domain ``test`` plus the test's own): the bulk answers must
equal what each domain says on its own, and a driver without bulk stats, or a domain the bulk calls did
not see, falls back to asking the domain.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


class Counting:
    """The connection; counts what the scan asks of each domain, and can lack bulk stats or see a stale list."""

    def __init__(self, conn, no_stats=False, fail_stats=False):
        self._conn = conn
        self.no_stats = no_stats
        self.fail_stats = fail_stats
        self.per_domain = 0

    def __getattr__(self, attr):
        return getattr(self._conn, attr)

    def getAllDomainStats(self, stats):
        if self.no_stats:
            raise libvirt.libvirtError("no bulk stats here")
        if self.fail_stats:
            raise libvirt.libvirtError("the daemon went away")
        return self._conn.getAllDomainStats(stats)

    def listAllDomains(self, flags=0):
        return [Dom(d, self) for d in self._conn.listAllDomains(flags)]


class Dom:
    def __init__(self, dom, owner):
        self._dom = dom
        self._owner = owner

    def __getattr__(self, attr):
        if attr in ("state", "isActive", "isPersistent"):
            self._owner.per_domain += 1
        return getattr(self._dom, attr)


@pytest.fixture
def domains(conn):
    """Three domains of the test's own: defined and off, defined and running, transient and running."""
    prefix = f"ut-st-{secrets.token_hex(3)}"
    xml = "<domain type='test'><name>{}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    conn.defineXML(xml.format(f"{prefix}-off"))
    conn.defineXML(xml.format(f"{prefix}-on")).create()
    conn.createXML(xml.format(f"{prefix}-transient"), 0)
    yield prefix
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            persistent = dom.isPersistent()  # a transient domain is gone once destroyed
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()


def truth(conn) -> dict:
    return {d.name(): (*d.state(), bool(d.isActive()), bool(d.isPersistent())) for d in conn.listAllDomains(0)}


def seen(scan) -> dict:
    return {n: (d.state, d.reason, d.active, d.persistent) for n, d in scan.domains.items()}


def test_the_bulk_reads_equal_what_each_domain_says_and_ask_no_domain(conn, domains):
    counting = Counting(conn)
    scan = HostScan.take(counting)
    assert seen(scan) == truth(conn)
    assert counting.per_domain == 0
    mine = {n: v[2:] for n, v in seen(scan).items() if n.startswith(domains)}
    assert mine == {
        f"{domains}-off": (False, True),
        f"{domains}-on": (True, True),
        f"{domains}-transient": (True, False),
    }
    # the XML the scan fetched follows from them: live only for the active, a definition only for the persistent
    assert scan.get(f"{domains}-off").live is None and scan.get(f"{domains}-transient").inactive is not None


def test_a_driver_without_bulk_stats_is_asked_domain_by_domain(conn, domains, monkeypatch):
    monkeypatch.setattr(libvirt.libvirtError, "get_error_code", lambda self: libvirt.VIR_ERR_NO_SUPPORT)
    counting = Counting(conn, no_stats=True)
    scan = HostScan.take(counting)
    assert seen(scan) == truth(conn)
    assert counting.per_domain == 3 * len(scan.domains)


def test_any_other_failure_of_the_bulk_read_is_a_libvirt_failure(conn, domains):
    with pytest.raises(LibvirtFailed, match="Listing domains"):
        HostScan.take(Counting(conn, fail_stats=True))


def test_a_domain_defined_after_the_bulk_read_is_asked_on_its_own(conn, domains):
    counting = Counting(conn)
    real_stats = counting.getAllDomainStats

    def stats_missing_one(flags):
        return [(d, s) for d, s in real_stats(flags) if d.name() != f"{domains}-on"]

    counting.getAllDomainStats = stats_missing_one
    scan = HostScan.take(counting)
    assert seen(scan) == truth(conn)
    assert counting.per_domain == 3  # state, isActive and isPersistent of that one domain only
