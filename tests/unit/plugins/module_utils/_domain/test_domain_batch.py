"""kvm_domain's batch (``domains``), the name read from the XML and the boot wait, on test:///default."""

from __future__ import annotations

import secrets
import threading
import time

import libvirt
import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.virtops.kvm.plugins.module_utils import _scan as scan_module
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._domain.boot import BootWatch, compile_marker, serial_log
from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    KvmError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, state_name
from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock, FakeClock

URI = "test:///default"
# test_domain's fixtures: one test:///default connection kept open per module, and its virConnect


@pytest.fixture
def names(conn):
    prefix = f"ub-{secrets.token_hex(3)}"
    made = [f"{prefix}-{i}" for i in range(4)]
    yield made
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()


def xml(name, serial=None, extra=""):
    console = f"<serial type='file'><source path='{serial}'/><target port='0'/></serial>" if serial else ""
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type>hvm</type></os>{extra}<devices>{console}</devices></domain>"""


def run(check=False, sleep=lambda _s: None, **params):
    base = dict(state="present", shutdown_timeout=5, force=False, remove_storage="none", uri=URI)
    base.update(params)
    c = Connection(URI)
    try:
        return DomainManager(base, c, check, clock=Clock(sleep=sleep)).run()
    finally:
        c.close()


def batch(items, check=False, **params):
    return run(check=check, domains=items, **params)


def four(items, **params):
    return [batch(items, check=c, **params) for c in (True, False, False, True)]


def assert_four(results, first=True):
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["diff"] == results[1]["diff"], "check mode predicts the real diff"
    assert [e["changes"] for e in results[0]["domains"]] == [e["changes"] for e in results[1]["domains"]]


def states(conn, names):
    out = {}
    for n in names:
        try:
            out[n] = state_name(conn.lookupByName(n).state()[0])
        except libvirt.libvirtError:
            out[n] = None
    return out


def test_define_from_xml_without_names_four_ways(conn, names):
    items = [dict(xml=xml(n)) for n in names[:3]]
    results = four(items)
    assert_four(results)
    assert results[0]["domains"][0]["domain"] is None  # check mode defined nothing
    assert [e["name"] for e in results[1]["domains"]] == names[:3]
    assert [e["changes"] for e in results[1]["domains"]] == [["define"]] * 3
    assert results[1]["changes"] == [f"{n}: define" for n in names[:3]]
    assert [d["before_header"] for d in results[1]["diff"]] == [f"{n} (state and inactive XML)" for n in names[:3]]
    assert results[2]["diff"] == []  # nothing changed: no diff
    assert states(conn, names[:3]) == dict.fromkeys(names[:3], "shutoff")


def test_check_mode_of_a_new_batch_touches_nothing(conn, names):
    r = batch([dict(xml=xml(n), state="running") for n in names], check=True)
    assert r["changed"] and [e["changes"] for e in r["domains"]] == [["define", "start"]] * 4
    assert states(conn, names) == dict.fromkeys(names)


def test_states_per_item_and_top_level_defaults_four_ways(conn, names):
    batch([dict(xml=xml(n)) for n in names])
    items = [
        dict(name=names[0]),  # top-level state
        dict(name=names[1], state="paused"),
        dict(name=names[2], state="present", title="kept off"),
        dict(name=names[3], state="running", memory=256),
    ]
    results = four(items, state="running", autostart=True)
    assert_four(results)
    assert states(conn, names) == {names[0]: "running", names[1]: "paused", names[2]: "shutoff", names[3]: "running"}
    entries = results[2]["domains"]
    assert [e["domain"]["autostart"] for e in entries] == [True] * 4
    assert entries[2]["domain"]["title"] == "kept off" and entries[3]["domain"]["max_memory_mib"] == 256
    # the fleet's shutdown in one task, four ways
    results = four([dict(name=n) for n in names], state="shutdown")
    assert_four(results)
    assert [e["changes"] for e in results[1]["domains"]] == [["shutdown"], ["resume", "shutdown"], [], ["shutdown"]]
    assert states(conn, names) == dict.fromkeys(names, "shutoff")


def test_empty_batch_changes_nothing():
    r = batch([])
    assert r["changed"] is False and r["domains"] == [] and r["changes"] == []


@pytest.mark.parametrize(
    ("items", "text"),
    [
        ([{"name": "A"}, {"name": "A"}], "listed twice"),
        ([{"name": "A"}, {"xml": xml("A")}], "also as domains[0]"),
        ([{"name": "A"}, {"name": "B", "state": "stopped"}], "state must be one of"),
        ([{"name": "A"}, {"name": "B", "colour": "red"}], "unknown key(s) colour"),
        ([{"name": "A"}, "B"], "must be a dict"),
        ([{"name": "A"}, {"state": "running"}], "needs a name"),
        ([{"name": "A"}, {"name": "B", "xml": xml("C")}], "The XML names the domain"),
        ([{"name": "A"}, {"name": "B", "force": "yes"}], "force must be true or false"),
        ([{"name": "A"}, {"name": "B", "memory": 0}], "memory"),
    ],
)
def test_bad_items_refuse_the_batch_before_the_host_is_read(conn, names, monkeypatch, items, text):
    batch([dict(xml=xml(n)) for n in names])
    rename = {"A": names[0], "B": names[1], "C": names[2]}
    for item in items:
        if isinstance(item, dict) and "name" in item:
            item["name"] = rename[item["name"]]
        if isinstance(item, dict) and "xml" in item:
            item["xml"] = item["xml"].replace(">A<", f">{names[0]}<").replace(">C<", f">{names[2]}<")

    def no_scan(_conn):
        raise AssertionError("the host was read")

    monkeypatch.setattr(scan_module.HostScan, "take", no_scan)
    with pytest.raises(InvalidInput) as exc:
        batch(items, state="running")
    assert text in exc.value.message and "nothing was changed" in exc.value.message
    assert states(conn, names) == dict.fromkeys(names, "shutoff")


def test_an_unknown_name_refuses_the_batch_and_nothing_changes(conn, names):
    batch([dict(xml=xml(n)) for n in names[:2]])
    items = [dict(name=names[0]), dict(name=names[3]), dict(name=names[1], state="destroyed")]
    for check in (True, False):
        with pytest.raises(DomainNotFound) as exc:
            batch(items, check=check, state="running")
        assert f"domains[1] ({names[3]})" in exc.value.message and "not defined" in exc.value.message
        assert "1 of 3 item(s)" in exc.value.message
    assert states(conn, names) == {names[0]: "shutoff", names[1]: "shutoff", names[2]: None, names[3]: None}


def test_mixed_refusals_are_all_named_with_a_general_type(conn, names):
    batch([dict(xml=xml(n)) for n in names[:2]])
    other = conn.lookupByName(names[0]).UUIDString()
    clash = xml(names[2]).replace("</name>", f"</name><uuid>{other}</uuid>")
    with pytest.raises(KvmError) as exc:
        batch([dict(name=names[3]), dict(xml=clash), dict(name=names[1], state="running")])
    assert type(exc.value) is KvmError  # pylint: disable=unidiomatic-typecheck  # exactly the base type
    assert "not defined" in exc.value.message and f"belongs to domain {names[0]}" in exc.value.message
    assert states(conn, names) == {names[0]: "shutoff", names[1]: "shutoff", names[2]: None, names[3]: None}


def _deaf(monkeypatch, deaf: set, log: list):
    """Guests in ``deaf`` ignore the ACPI button (the test driver obeys it at once); every call is logged."""
    shutdown, destroy = libvirt.virDomain.shutdown, libvirt.virDomain.destroy
    lock = threading.Lock()

    def fake_shutdown(dom):
        with lock:
            log.append(("shutdown", dom.name()))
        if dom.name() not in deaf:
            return shutdown(dom)
        return 0

    def fake_destroy(dom):
        with lock:
            log.append(("destroy", dom.name()))
        return destroy(dom)

    monkeypatch.setattr(libvirt.virDomain, "shutdown", fake_shutdown)
    monkeypatch.setattr(libvirt.virDomain, "destroy", fake_destroy)


def test_a_deaf_guest_fails_alone_with_its_force_hint(conn, names, monkeypatch):
    batch([dict(xml=xml(n)) for n in names], state="running")
    log: list = []
    _deaf(monkeypatch, {names[1]}, log)
    with pytest.raises(TimeoutExpired) as exc:
        batch([dict(name=n) for n in names], state="shutdown", shutdown_timeout=1, sleep=time.sleep)
    err = exc.value
    assert "1 of 4 domain(s) failed" in err.message and "force: true" in err.message and names[1] in err.message
    assert err.details["failed_domains"] == [names[1]] and err.details["changed"] is True
    entries = {e["name"]: e for e in err.details["domains"]}
    assert entries[names[1]]["failed"] is True and entries[names[1]]["error"] == "TimeoutExpired"
    assert entries[names[1]]["changes"] == ["shutdown"] and entries[names[1]]["domain"]["state"] == "running"
    for n in (names[0], names[2], names[3]):
        assert entries[n]["changed"] and "failed" not in entries[n] and entries[n]["domain"]["state"] == "shutoff"
    assert states(conn, names) == {**dict.fromkeys(names, "shutoff"), names[1]: "running"}
    # its own force, and the batch converges; then it is idempotent
    r = batch(
        [dict(name=n, force=n == names[1]) for n in names], state="shutdown", shutdown_timeout=1, sleep=time.sleep
    )
    assert [e["changes"] for e in r["domains"]] == [[], ["shutdown", "destroy after timeout"], [], []]
    assert batch([dict(name=n) for n in names], state="shutdown")["changed"] is False


@pytest.mark.parametrize("parallel", [1, 4])
def test_slow_shutdowns_overlap_up_to_parallel(conn, names, monkeypatch, parallel):
    batch([dict(xml=xml(n)) for n in names[:2]], state="running")
    log: list = []
    _deaf(monkeypatch, set(names[:2]), log)
    r = batch(
        [dict(name=n) for n in names[:2]],
        state="shutdown",
        shutdown_timeout=1,
        force=True,
        parallel=parallel,
        sleep=time.sleep,
    )
    assert [e["changes"] for e in r["domains"]] == [["shutdown", "destroy after timeout"]] * 2
    kinds = [kind for kind, _name in log]
    if parallel == 1:  # one after the other: each waits its whole timeout
        assert kinds == ["shutdown", "destroy", "shutdown", "destroy"]
    else:  # both asked before either timed out
        assert kinds == ["shutdown", "shutdown", "destroy", "destroy"]


def xml_reads(conn, monkeypatch) -> tuple[list, list]:
    """(every XMLDesc call from now on, by domain name; those one HostScan makes), the list cleared."""
    reads, real_xml = [], libvirt.virDomain.XMLDesc

    def counted_xml(dom, flags=0):
        reads.append(dom.name())
        return real_xml(dom, flags)

    monkeypatch.setattr(libvirt.virDomain, "XMLDesc", counted_xml)
    HostScan.take(conn)
    per_scan = sorted(reads)
    reads.clear()
    return reads, per_scan


def test_one_scan_and_no_second_read_of_an_unchanged_domain(conn, names, monkeypatch):
    batch([dict(xml=xml(n)) for n in names], state="running")
    taken, real_take = [], HostScan.take

    class Counted:
        @staticmethod
        def take(c):
            taken.append(1)
            return real_take(c)

    reads, per_scan = xml_reads(conn, monkeypatch)
    monkeypatch.setattr(scan_module, "HostScan", Counted)
    r = batch([dict(name=n) for n in names], state="running")
    assert r["changed"] is False and len(taken) == 1
    assert sorted(reads) == per_scan  # the scan's reads and nothing else
    assert [e["domain"]["state"] for e in r["domains"]] == ["running"] * 4


def test_rebooted_items_always_change(conn, names):
    batch([dict(xml=xml(n)) for n in names[:2]], state="running")
    for check in (True, False):
        r = batch([dict(name=n) for n in names[:2]], check=check, state="rebooted")
        assert [e["changes"] for e in r["domains"]] == [["reboot"], ["reboot"]]


def test_a_clone_base_in_a_batch_refuses_it(conn, names, tmp_path):
    import subprocess

    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)], check=True)

    def disk(path):
        return f"<disk type='file' device='disk'><source file='{path}'/><target dev='vda' bus='virtio'/></disk>"

    items = [
        dict(xml=xml(names[0]).replace("<devices>", "<devices>" + disk(base))),
        dict(xml=xml(names[1]).replace("<devices>", "<devices>" + disk(top))),
        dict(xml=xml(names[2])),
    ]
    batch(items)
    with pytest.raises(Conflict, match="base of other disks"):
        batch([dict(name=n) for n in names[:3]], state="running")
    assert states(conn, names[:3]) == dict.fromkeys(names[:3], "shutoff")


def test_absent_items_remove_and_report_files(conn, names):
    batch([dict(xml=xml(n)) for n in names[:2]], state="running")
    results = four([dict(name=n) for n in names[:2]], state="absent")
    assert_four(results)
    assert [e["changes"] for e in results[1]["domains"]] == [["shutdown", "undefine"]] * 2
    assert states(conn, names[:2]) == dict.fromkeys(names[:2])


def test_argument_spec_refuses_bad_items_and_mixing_name_with_domains():
    validator = ArgumentSpecValidator(DomainManager.argument_spec(), **DomainManager.MODULE_OPTIONS)
    bad_state = validator.validate(dict(domains=[dict(name="a", state="stopped")]))
    assert "state" in " ".join(str(e) for e in bad_state.errors)
    unknown = validator.validate(dict(domains=[dict(name="a", colour="red")]))
    assert "colour" in " ".join(str(e) for e in unknown.errors)
    both = validator.validate(dict(name="a", domains=[dict(name="b")]))
    assert "mutually exclusive" in " ".join(str(e) for e in both.errors)
    none = validator.validate(dict(state="running"))
    assert "one of the following is required" in " ".join(str(e) for e in none.errors)
    assert validator.validate(dict(xml="<domain/>")).errors.errors == []


def test_parallel_must_be_positive(names):
    with pytest.raises(InvalidInput, match="parallel"):
        batch([dict(name=names[0])], parallel=0)


# --------------------------------------------------------------------------- name from the XML


def test_name_may_come_from_the_xml_alone(conn, names):
    results = [run(check=c, xml=xml(names[0])) for c in (True, False, False, True)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[1]["domain"]["name"] == names[0] and results[1]["changes"] == ["define"]
    with pytest.raises(InvalidInput, match="Give the name option, or a <name>"):
        run(xml="<domain type='test'><memory>1</memory></domain>")


# --------------------------------------------------------------------------- boot marker


def test_boot_watch_counts_only_what_comes_after_the_mark(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("old boot\nUP hostname=a\n")
    watch = BootWatch("d", str(log), compile_marker(r"UP hostname=\S+"), 2, FakeClock())
    watch.mark()
    assert not watch.seen()
    with pytest.raises(TimeoutExpired, match=r"did not print .* within 2 s") as exc:
        watch.wait()
    assert str(log) in exc.value.message and exc.value.details["changed"] is True
    with log.open("a") as f:
        f.write("booting\nUP hostname=b\n")
    assert watch.seen()
    # a console without append: the log starts again, shorter than the mark
    log.write_text("UP hostname=c\n")
    assert watch.seen()
    log.write_text("booting\n")
    assert not watch.seen()


def test_boot_marker_option_checks():
    with pytest.raises(InvalidInput, match="not a valid regular expression"):
        run(name="x", xml=xml("x"), boot_marker="(unclosed")
    with pytest.raises(InvalidInput, match="boot_timeout"):
        run(name="x", xml=xml("x"), boot_marker="up", boot_timeout=-1)
    assert serial_log(libvirt_free_root(xml("x", serial="/l/x.log"))) == "/l/x.log"
    assert serial_log(libvirt_free_root(xml("x"))) is None
    pty = "<serial type='pty'><log file='/l/pty.log' append='on'/><target port='0'/></serial>"
    assert serial_log(libvirt_free_root(xml("x").replace("<devices>", f"<devices>{pty}"))) == "/l/pty.log"
    bare = "<serial type='pty'><target port='0'/></serial>"
    assert serial_log(libvirt_free_root(xml("x").replace("<devices>", f"<devices>{bare}"))) is None


def libvirt_free_root(text):
    from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx

    return dx.parse(text)


def test_start_waits_for_the_marker_and_a_running_domain_does_not(conn, names, tmp_path):
    log = tmp_path / "a.log"
    log.write_text("VIRTOPS-GUEST-UP hostname=earlier\n")
    waited = []

    def guest_boots(_s):
        waited.append(1)
        with log.open("a") as f:
            f.write("VIRTOPS-GUEST-UP hostname=now\n")

    params = dict(xml=xml(names[0], serial=log), state="running", boot_marker="VIRTOPS-GUEST-UP", boot_timeout=30)
    r = run(sleep=guest_boots, **params)
    assert r["changes"] == ["define", "start"] and waited == [1]
    r = run(sleep=guest_boots, **params)
    assert r["changed"] is False and waited == [1]  # running already: nothing to wait for


def test_a_domain_to_start_without_a_serial_log_is_refused_before_anything(conn, names):
    batch([dict(xml=xml(names[0])), dict(xml=xml(names[1], serial="/tmp/virtops-never.log"))])
    with pytest.raises(InvalidInput, match=f"{names[0]} has no <serial type='file'>"):
        batch([dict(name=n) for n in names[:2]], state="running", boot_marker="UP")
    assert states(conn, names[:2]) == dict.fromkeys(names[:2], "shutoff")


def test_a_batch_start_that_never_sees_its_marker_fails_alone(conn, names, tmp_path):
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    batch([dict(xml=xml(n, serial=lg)) for n, lg in zip(names[:2], logs)])

    def only_first_boots(_s):
        with logs[0].open("a") as f:
            f.write("UP\n")

    with pytest.raises(TimeoutExpired) as exc:
        run(domains=[dict(name=n) for n in names[:2]], state="running", boot_marker="UP", boot_timeout=1,
            sleep=lambda s: (only_first_boots(s), time.sleep(s)))  # fmt: skip
    assert exc.value.details["failed_domains"] == [names[1]] and "boot_timeout" in exc.value.message
    assert [e["changes"] for e in exc.value.details["domains"]] == [["start"], ["start"]]
    assert states(conn, names[:2]) == dict.fromkeys(names[:2], "running")


def test_boots_are_waited_for_together_after_every_start(conn, names, tmp_path, monkeypatch):
    """parallel bounds the starts, not the boots: with parallel=1 both start before the first wait."""
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    batch([dict(xml=xml(n, serial=lg)) for n, lg in zip(names[:2], logs)])
    events, create = [], libvirt.virDomain.create

    def recorded_create(dom):
        events.append(("start", dom.name()))
        return create(dom)

    def guests_boot(_s):
        events.append(("wait",))
        for lg in logs:
            with lg.open("a") as f:
                f.write("UP\n")

    monkeypatch.setattr(libvirt.virDomain, "create", recorded_create)
    r = run(domains=[dict(name=n) for n in names[:2]], state="running", boot_marker="UP", parallel=1, sleep=guests_boot)
    assert r["changed"] and events == [("start", names[0]), ("start", names[1]), ("wait",)]


def test_acting_starts_from_the_scan_and_reads_afresh_after_the_change(conn, names, monkeypatch):
    batch([dict(xml=xml(n)) for n in names[:2]], state="running")
    reads, per_scan = xml_reads(conn, monkeypatch)
    r = batch([dict(name=n) for n in names[:2]], state="shutdown")
    assert [e["changes"] for e in r["domains"]] == [["shutdown"], ["shutdown"]]
    # the scan, then one read of each domain's (now inactive) XML for its result, nothing else
    assert sorted(reads) == sorted(per_scan + names[:2])
    assert [e["domain"]["state"] for e in r["domains"]] == ["shutoff", "shutoff"]


def test_a_thousand_domains_in_one_task(conn):
    """Any batch size (issue 28): 1 000 domains defined and started by one task, four ways, then removed by one."""
    prefix = f"ub-{secrets.token_hex(3)}"
    many = [f"{prefix}-{i:04d}" for i in range(1000)]
    try:
        results = four([dict(xml=xml(n), state="running") for n in many])
        assert_four(results)
        assert set(states(conn, many).values()) == {"running"}
        gone = batch([dict(name=n, state="absent") for n in many])
        assert gone["changed"] is True and set(states(conn, many).values()) == {None}
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
