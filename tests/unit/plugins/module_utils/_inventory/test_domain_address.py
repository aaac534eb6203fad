"""kvm_domain_address's AddressManager on libvirt's test:///default (no daemon), with a fake clock.

The test driver makes up an IPv4 address (192.168.x.y, by domain id) for every NIC of a running
domain, for every source; a domain defined here without a NIC never gets one, so
the wait loop and its timeout can be driven without a real guest.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._inventory.address_manager import AddressManager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import FakeClock
from tests import fakes


@pytest.fixture
def conn():
    c, close = fakes.open_conn()
    yield c
    close()


def define(conn, name: str, mac: str | None, start: bool = True):
    nic = f"<interface type='network'><mac address='{mac}'/><source network='default'/></interface>" if mac else ""
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64'>hvm</type></os><devices>{nic}</devices></domain>"
    )
    if start:
        dom.create()
    return dom


def run(conn, check=False, clock=None, **params):
    clock = clock or FakeClock(100.0)
    m = AddressManager(params, fakes.Held(conn), check, clock=clock)
    return m.run(), m, clock


def test_an_address_found_at_once_waits_for_nothing(conn):
    define(conn, "ut-a", "aa:bb:cc:dd:ee:ff")
    r, _m, clock = run(conn, name=["ut-a", "test"], sources=["lease"])
    assert r["changed"] is False
    assert sorted(r["hosts"]) == ["test", "ut-a"]
    assert all(a.startswith("192.168.") for a in r["hosts"].values())  # the driver numbers by domain id
    assert r["addresses"]["ut-a"]["source"] == "lease" and r["addresses"]["ut-a"]["error"] is None
    assert clock.sleeps == [] and r["waited"] == 0


def test_the_batch_waits_together_then_fails_naming_only_the_missing(conn):
    define(conn, "ut-a", "aa:bb:cc:dd:ee:ff")
    define(conn, "ut-b", None)  # no NIC, so no address ever
    clock = FakeClock(100.0)
    with pytest.raises(KvmError) as info:
        run(conn, clock=clock, name=["ut-a", "ut-b"], sources=["lease", "arp"], timeout=10)
    exc = info.value
    assert "1 of 2 domain(s) have no IPv4 address after 10.0 s (ut-b)" in exc.message
    assert "ut-b: the domain has no network interface" in exc.message
    assert exc.details["missing"] == ["ut-b"] and list(exc.details["hosts"]) == ["ut-a"]
    # one loop for the batch: polls every 2 s, the last sleep cut to the deadline
    assert sum(clock.sleeps) == 10 and all(s <= 2 for s in clock.sleeps)


def test_a_domain_that_is_not_running_fails_at_once_without_waiting(conn):
    define(conn, "ut-off", "aa:bb:cc:dd:ee:ff", start=False)
    with pytest.raises(KvmError, match="ut-off: the domain is not running") as info:
        run(conn, name=["ut-off"], timeout=300)
    assert info.value.details["waited"] == 0


def test_no_wait_reads_once(conn):
    define(conn, "ut-b", None)
    clock = FakeClock(100.0)
    with pytest.raises(KvmError, match=r"after 0\.0 s"):
        run(conn, clock=clock, name=["ut-b"], wait=False)
    assert clock.sleeps == []


def test_family_ipv6_ignores_the_ipv4_address(conn):
    define(conn, "ut-a", "aa:bb:cc:dd:ee:ff")
    with pytest.raises(KvmError, match=r"no IPv6 address.*ut-a: lease: only 192\.168\."):
        run(conn, name=["ut-a"], family="ipv6", wait=False)
    r, _m, _c = run(conn, name=["ut-a"], family="any", wait=False)
    assert r["hosts"]["ut-a"].startswith("192.168.")


def test_undefined_domains_are_an_error_before_waiting_but_a_warning_in_check_mode(conn):
    with pytest.raises(DomainNotFound, match="ut-nope"):
        run(conn, name=["test", "ut-nope"])
    clock = FakeClock(100.0)
    define(conn, "ut-noaddr", None)
    r, m, clock = run(conn, check=True, clock=clock, name=["test", "ut-nope", "ut-noaddr"])
    assert list(r["hosts"]) == ["test"]
    assert r["addresses"]["ut-nope"]["error"] == "domain ut-nope is not defined"
    assert clock.sleeps == [] and any("Check mode" in w for w in m.warnings)


def test_the_agent_needs_a_read_write_connection_the_rest_not():
    assert AddressManager(dict(name=["x"], sources=["lease"]), fakes.Held(None)).READONLY is True
    assert AddressManager(dict(name=["x"]), fakes.Held(None)).READONLY is False  # agent is a default source


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (dict(name=[]), "name lists no domain"),
        (dict(name=["a/b"]), "a/b"),
        (dict(name=["a"], sources=["dhcp"]), "Unknown address source 'dhcp'"),
        (dict(name=["a"], sources=["lease", "lease"]), "listed twice"),
        (dict(name=["a"], timeout=-1), "timeout is -1: allowed are 0 to 604800 seconds"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(params, words):
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(")):
        AddressManager(params, fakes.Held(None))
