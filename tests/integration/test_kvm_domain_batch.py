"""kvm_domain's batch (``domains``) against the real qemu:///system with four tiny TCG guests.

One module-scoped fleet, booted once by the batch itself: two guests that obey
the ACPI power button and two deaf ones (``acpi=off``), one of them allowed to
be forced off. The tests run in order: boot (four ways), bad items, reboot,
the concurrent shutdown with the deaf guests, then the rerun that converges.
"""

from __future__ import annotations

import threading
import time

import libvirt
import pytest

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

MOD = "kvm_domain"
# Seconds a graceful shutdown may take here: a guest that obeys is off in a few seconds even on a busy
# machine; the deaf ones use all of it.
TIMEOUT = 30


def _xml(name, log, deaf=False):
    text = guestlib.domain_xml(name, None, log, kind="kernel")
    if deaf:
        text = text.replace("console=ttyS0 panic=-1", "console=ttyS0 panic=-1 acpi=off")
    return text


@pytest.fixture(scope="module")
def fleet(conn, guest):
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        names = {kind: f"{prefix}-{kind}" for kind in ("a", "b", "deaf", "forced")}
        logs = {kind: scratch / f"{kind}.log" for kind in names}
        xmls = {kind: _xml(names[kind], logs[kind], deaf=kind in ("deaf", "forced")) for kind in names}
        yield dict(prefix=prefix, names=names, logs=logs, xmls=xmls)


def states(conn, names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = conn.lookupByName(n).state()[0]
        except libvirt.libvirtError:
            out[n] = None
    return out


def ours(conn, prefix) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))


def test_define_start_and_wait_for_the_boot_four_ways(conn, fleet):
    """Items with only an XML (the name is its <name>), started at once; the task returns once each has booted."""
    items = [dict(xml=fleet["xmls"][k]) for k in ("a", "b", "deaf", "forced")]
    args = dict(domains=items, state="running", boot_marker=guestlib.MARKER, boot_timeout=300)
    check = run_module(MOD, args, check=True)
    assert check["changed"] and ours(conn, fleet["prefix"]) == []  # check mode defined nothing
    assert [e["changes"] for e in check["domains"]] == [["define", "start"]] * 4
    results = [check, run_module(MOD, args), run_module(MOD, args), run_module(MOD, args, check=True)]
    assert_four_ways(results)
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    names = list(fleet["names"].values())
    assert [e["name"] for e in results[1]["domains"]] == names
    # the boot was waited for: every marker is in its log when the task returns
    for kind in fleet["names"]:
        assert len(guestlib.read_markers(fleet["logs"][kind])) == 1, kind
    assert set(states(conn, names).values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert [e["domain"]["state"] for e in results[2]["domains"]] == ["running"] * 4


@pytest.mark.parametrize(
    ("bad", "text", "error"),
    [
        (dict(name="{a}"), "listed twice", "InvalidInput"),
        (dict(name="{prefix}-nowhere"), "not defined", "DomainNotFound"),
        (dict(name="{b}", state="stopped"), "state", None),  # Ansible's own argument check
        (dict(name="{b}", colour="red"), "colour", None),
    ],
)
def test_bad_items_refuse_the_batch_and_change_nothing(conn, fleet, bad, text, error):
    names = fleet["names"]
    fill = dict(names, prefix=fleet["prefix"])
    bad = {k: v.format(**fill) if isinstance(v, str) else v for k, v in bad.items()}
    items = [dict(name=names["a"], state="destroyed"), bad, dict(name=names["forced"], state="paused")]
    before = states(conn, names.values())
    for check in (True, False):
        r = run_module(MOD, dict(domains=items), check=check)
        assert r.get("failed") and text in r["msg"], r.get("msg")
        if error:
            assert r["error"] == error and "nothing was changed" in r["msg"]
    assert states(conn, names.values()) == before


def test_reboot_two_at_once_and_wait_for_their_new_boot(conn, fleet):
    names = fleet["names"]
    r = run_module(
        MOD,
        dict(domains=[dict(name=names["a"]), dict(name=names["b"])], state="rebooted", boot_marker=guestlib.MARKER,
             shutdown_timeout=240, boot_timeout=300),
    )  # fmt: skip
    assert not r.get("failed"), r.get("msg")
    assert [e["changes"] for e in r["domains"]] == [["reboot"], ["reboot"]]
    for kind in ("a", "b"):
        assert len(guestlib.read_markers(fleet["logs"][kind])) == 2, kind  # the new boot's marker, waited for


class _OffWatch:
    """Notes, from a second connection, when each domain is first seen shut off."""

    def __init__(self, names):
        self.names = names
        self.off: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        c = libvirt.open("qemu:///system")
        try:
            while True:
                last = self.stop.is_set()  # one more look after the task returned
                for n in self.names:
                    if n not in self.off and c.lookupByName(n).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF:
                        self.off[n] = time.monotonic()
                if last:
                    return
                time.sleep(0.1)
        finally:
            c.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_concurrent_shutdown_a_deaf_guest_fails_alone(conn, fleet):
    """The deaf guests come first: one after the other, the others would wait for both timeouts."""
    names = fleet["names"]
    items = [
        dict(name=names["deaf"]),
        dict(name=names["forced"], force=True),
        dict(name=names["a"]),
        dict(name=names["b"]),
    ]
    args = dict(domains=items, state="shutdown", shutdown_timeout=TIMEOUT)
    check = run_module(MOD, args, check=True)
    assert check["changed"] and [e["changes"] for e in check["domains"]] == [["shutdown"]] * 4
    assert set(states(conn, names.values()).values()) == {libvirt.VIR_DOMAIN_RUNNING}  # check mode: no side effect

    with _OffWatch([names["forced"], names["a"], names["b"]]) as watch:
        r = run_module(MOD, args)
    assert r.get("failed") and r["error"] == "TimeoutExpired", r.get("msg")
    assert r["failed_domains"] == [names["deaf"]]
    assert f"did not shut down within {TIMEOUT} s" in r["msg"] and "Set force: true" in r["msg"]
    entries = {e["name"]: e for e in r["domains"]}
    deaf = entries[names["deaf"]]
    assert deaf["failed"] is True and deaf["error"] == "TimeoutExpired" and "force: true" in deaf["msg"]
    assert deaf["domain"]["state"] == "running"
    assert entries[names["forced"]]["changes"] == ["shutdown", "destroy after timeout"]
    for kind in ("a", "b"):
        assert entries[names[kind]]["changes"] == ["shutdown"] and "failed" not in entries[names[kind]]
        assert "VIRTOPS-GUEST-POWEROFF" in fleet["logs"][kind].read_text(errors="replace")  # a real ACPI shutdown
    assert states(conn, names.values()) == {
        names["deaf"]: libvirt.VIR_DOMAIN_RUNNING,
        names["forced"]: libvirt.VIR_DOMAIN_SHUTOFF,
        names["a"]: libvirt.VIR_DOMAIN_SHUTOFF,
        names["b"]: libvirt.VIR_DOMAIN_SHUTOFF,
    }
    # concurrent: the obedient guests were off before the forced one's timeout ran out
    assert max(watch.off[names["a"]], watch.off[names["b"]]) < watch.off[names["forced"]]


def test_the_rerun_converges_and_is_idempotent(conn, fleet):
    """The deaf guest forced off at once (shutdown_timeout 0 with force); then nothing to do, four ways."""
    names = fleet["names"]
    items = [dict(name=names["deaf"], force=True, shutdown_timeout=0), *(dict(name=names[k]) for k in "ab")]
    items.append(dict(name=names["forced"]))
    results = four_ways(MOD, dict(domains=items, state="shutdown", shutdown_timeout=TIMEOUT))
    assert_four_ways(results)
    assert results[0]["diff"] == results[1]["diff"]
    assert [e["changes"] for e in results[1]["domains"]] == [["destroy"], [], [], []]
    assert set(states(conn, names.values()).values()) == {libvirt.VIR_DOMAIN_SHUTOFF}
