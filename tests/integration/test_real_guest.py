"""The integration stage on a real Debian 12 guest (issue 25): seal a used template, clone it, reach each clone.

Its playbooks, inventory and probe script are the marked blocks of docs/distribution-image-to-class.md
("From a distribution image to a class"; ``realguest.class_blocks()`` reads them, and a missing or renamed
block fails the stage naming it), run as the page has them with the variables set by ``-e``.

One flow, module-scoped, so the stage costs one template boot and one clone boot (TCG: the template
reaches sshd in ~45 s, three clones booting together in 90-130 s). Everything runs inside a NetHost
(tests/nethost.py: a hypervisor with its own libvirtd in private network, mount and UTS namespaces), and
every Ansible run and SSH connection is made from inside its network namespace, so no packet leaves it.

Steps (each a test below, in order; a step whose predecessor failed is skipped, naming it):

1. ``network``: ``kvm_network`` makes a NAT network with DHCP in the NetHost.
2. ``template``: the cached Debian 12 image (realguest.py) is defined as the template, booted once
   over that network, reached over SSH (sshd up, its machine-id, host keys, dpkg.log and journal
   read: the identity a used template carries), and shut down by ACPI.
3. ``seal``: ``kvm_template name=<tpl> state=sealed``; a second run changes nothing.
4. ``fleet``: one playbook: ``kvm_clone`` makes and starts three clones on the network (two with their
   own cloud-init user data, one with no seed at all, so cloud-init finds no datasource), each with
   ``identity_source: sealed-template``, ``kvm_domain_address`` waits for their leases, the
   ``virtops.kvm.libvirt`` inventory is read again, then a second play reaches every clone over SSH
   (the inventory's ``ansible_host``, the baked test key) and reports what makes it itself.
5. ``identity``: each clone has its own hostname; machine-ids distinct and not the template's; SSH
   host keys distinct and not the template's; sshd active; the template's dpkg.log and journal gone;
   the seeded clones ran their own user data (``/etc/class-note``), the unseeded one ran no cloud-init.
6. ``rerun``: seal and fleet again: changed=0 everywhere, the same answers.
7. ``teardown``: ``kvm_clone state=absent`` and ``kvm_network state=absent``: only the template is left.

A failing step is a finding about the product: it is fixed there, never by loosening this test.
Timings are printed at the end (``-s`` shows them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lxml import etree

from tests import guestlib, harness, nethost, realguest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SUBNET = "192.168.152"  # exists only inside the NetHost's network namespace
BOOT_TIMEOUT = 600  # TCG on 2 shared cores: the template reaches sshd in ~45 s, clones in 90-130 s
PLAY_TIMEOUT = 1800
RESULT = re.compile(r"^(ok|changed|skipping): \[([^\]]+)\] => (\{.*\})$", re.M)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
SSH_OPTS = realguest.SSH_OPTS

# --------------------------------------------------------------------------- helpers


def recap(stdout: str) -> dict[str, dict[str, int]]:
    keys = ("ok", "changed", "unreachable", "failed")
    return {m.group(1): dict(zip(keys, map(int, m.groups()[1:]))) for m in RECAP.finditer(stdout)}


def results(stdout: str) -> list[tuple[str, str, dict]]:
    return [(m.group(1), m.group(2), json.loads(m.group(3))) for m in RESULT.finditer(stdout)]


def parse_probe(text: str) -> dict:
    """``key=value`` lines (``|``- or newline-separated) of the page's whoami.sh: hostkey and journal are lists."""
    out: dict = {"hostkey": [], "journal": []}
    for item in re.split(r"[|\n]", text):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key in ("hostkey", "journal"):
            out[key].append(value)
        else:
            out[key] = value
    return out


def said(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-12000:]}\n--- stderr\n{proc.stderr[-4000:]}"


class Lab(realguest.Steps):
    """The shared state of the flow: the NetHost, names, paths, what each step found, and timings."""

    def __init__(self, nh: nethost.NetHost, guest: dict, tmp: Path) -> None:
        super().__init__()
        self.nh, self.guest, self.tmp = nh, guest, tmp
        self.template = f"{nh.name}-tpl"
        self.network = f"{nh.name}-lab"
        self.clones = [f"{nh.name}-c1", f"{nh.name}-c2", f"{nh.name}-c3"]  # c3: no seed
        self.blocks = realguest.class_blocks()

    def extra_vars(self) -> dict:
        """The page's variables, every one whose default is a plain value set here (``-e``), so none points away."""
        key_pub = Path(self.guest["key"] + ".pub").read_text().strip()
        seeded = {
            c: {
                "name": c,
                "cloud_init": {
                    "user_data": {
                        "write_files": [{"path": "/etc/class-note", "content": f"seeded {c}\n", "permissions": "0644"}],
                        "ssh_authorized_keys": [key_pub],
                    }
                },
            }
            for c in self.clones[:2]
        }
        values = {
            "libvirt_uri": self.nh.uri,
            "template": self.template,
            "class_network": self.network,
            "class_subnet": SUBNET,
            "class_clones": [seeded[c] for c in self.clones[:2]] + [{"name": self.clones[2]}],
            "boot_timeout": BOOT_TIMEOUT,
            "whoami_script": str(self.tmp / "whoami.sh"),
        }
        page = realguest.class_vars(self.blocks)
        unset = sorted(k for k, v in page.items() if k not in values and not (isinstance(v, str) and "{{" in v))
        assert not unset, f"{realguest.CLASS_DOC}: variables the stage does not set: {unset}"
        return values

    def play(self, book: str, *argv: str) -> subprocess.CompletedProcess:
        """``ansible-playbook`` of this venv inside the NetHost's network namespace; output kept in tmp."""
        env = harness.playbook_env(
            ANSIBLE_LOCAL_TEMP=str(self.tmp / "ansible-tmp"),
            ANSIBLE_CALLBACK_RESULT_FORMAT="json",
            ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
            ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
            ANSIBLE_HOST_KEY_CHECKING="false",
        )
        cmd = [str(BIN / "ansible-playbook"), "-i", "class.libvirt.yml", book]  # and the implicit localhost
        cmd += ["-e", "@vars.json", *argv]
        t0 = time.monotonic()
        proc = self.nh.run(cmd, cwd=self.tmp, env=env, capture_output=True, text=True, timeout=PLAY_TIMEOUT)
        with (self.tmp / "output.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}  ({time.monotonic() - t0:.1f} s)\nrc={proc.returncode}\n")
            log.write(f"{proc.stdout}\n{proc.stderr}\n")
        return proc

    def ssh(self, address: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return realguest.ssh(self.nh, self.guest["key"], address, command, timeout=timeout)


def _serial_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return f"(no {path})"


# --------------------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    t0 = time.monotonic()
    guest = realguest.build()
    built = time.monotonic() - t0
    tmp = tmp_path_factory.mktemp("real-guest")
    nh = nethost.NetHost(guestlib.new_prefix())
    try:
        nh.start()
        state = Lab(nh, guest, tmp)
        state.times["build" if guest["built"] else "build (cached)"] = built
        blocks = state.blocks
        (tmp / "whoami.sh").write_text(blocks["whoami"])
        # the page's inventory, on the NetHost's URI, reaching the clones with the test key
        inventory = yaml.safe_load(blocks["inventory"])
        inventory["uris"] = [nh.uri]
        inventory["compose"] = {
            **inventory.get("compose", {}),
            "ansible_ssh_private_key_file": repr(guest["key"]),
            "ansible_ssh_common_args": repr(" ".join(SSH_OPTS)),
        }
        (tmp / "class.libvirt.yml").write_text(yaml.safe_dump(inventory))
        (tmp / "vars.json").write_text(json.dumps(state.extra_vars()))
        for name in ("network", "seal", "fleet", "teardown"):
            (tmp / f"{name}.yml").write_text(blocks[name])
        yield state
    finally:
        nh.stop()
        total = time.monotonic() - t0
        times = ", ".join(f"{k} {v:.1f} s" for k, v in state.times.items()) if "state" in locals() else ""
        print(f"\nreal guest stage: {times}; whole module {total:.1f} s; logs in {tmp}")


def test_1_network(lab):
    proc = lab.play("network.yml")
    assert proc.returncode == 0, said(proc)
    assert recap(proc.stdout)["localhost"]["changed"] == 1, said(proc)
    lab.done.append("network")


def test_2_template_boots_to_sshd_and_is_used(lab):
    """The image as a template: it boots, sshd answers, and it carries what a used template has."""
    import libvirt

    lab.need("network")
    nh, guest = lab.nh, lab.guest
    disk = nh.copy_image(guest["disk"], "tpl.qcow2")
    kernel = nh.copy_image(guest["kernel"], "vmlinuz")
    initrd = nh.copy_image(guest["initrd"], "initrd.img")
    serial = nh.images / f"{lab.template}.serial.log"
    conn = nh.connect()
    try:
        dom = conn.defineXML(realguest.domain_xml(lab.template, disk, kernel, initrd, serial, network=lab.network))
        t0 = time.monotonic()
        dom.create()
        deadline = t0 + BOOT_TIMEOUT
        try:
            address = realguest.lease_address(dom, deadline)
            lab.times["template lease"] = time.monotonic() - t0
            realguest.wait_for_ssh(nh, guest["key"], address, deadline)
        except TimeoutError as e:
            pytest.fail(f"template, within {BOOT_TIMEOUT} s: {e}\n{_serial_tail(serial)}")
        lab.times["template boot to sshd"] = time.monotonic() - t0
        proc = lab.ssh(address, "systemctl is-system-running --wait; " + lab.blocks["whoami"], timeout=BOOT_TIMEOUT)
        assert proc.returncode == 0, said(proc)
        facts = parse_probe(proc.stdout)
        lab.facts["template"] = facts
        assert facts["sshd"] == "active", facts
        assert facts["hostname"] == guest["hostname"], facts
        assert facts["machine_id"] == guest["machine_id"], facts
        assert sorted(facts["hostkey"]) == sorted(guest["ssh_host_key_fingerprints"]), facts
        # used: the logs, a journal and keys a clone must not keep
        assert facts["dpkg_log"] not in ("absent", "0"), facts
        assert guest["machine_id"] in facts["journal"], facts
        assert facts["cloud_init"] == "disabled", facts  # no seed: no datasource, cloud-init stays out

        t1 = time.monotonic()
        dom.shutdown()
        guestlib.wait_for_state(dom, (libvirt.VIR_DOMAIN_SHUTOFF,), timeout=180)
        lab.times["template shutdown"] = time.monotonic() - t1
    finally:
        conn.close()
    lab.done.append("template")


def test_3_seal(lab):
    lab.need("template")
    proc = lab.play("seal.yml")
    assert proc.returncode == 0, said(proc)
    assert recap(proc.stdout)["localhost"]["changed"] == 1, said(proc)
    seal = [r["seal"] for _s, _h, r in results(proc.stdout) if "seal" in r]
    assert seal and seal[0].get("changed") is True and isinstance(seal[0].get("sealed"), dict), said(proc)
    lab.facts["seal"] = seal[0]
    again = lab.play("seal.yml")
    assert again.returncode == 0 and recap(again.stdout)["localhost"]["changed"] == 0, said(again)
    lab.done.append("seal")


def _fleet_facts(proc: subprocess.CompletedProcess, clones: list[str]) -> dict[str, dict]:
    out = {}
    sources = []
    for _status, host, result in results(proc.stdout):
        if isinstance(result.get("msg"), dict) and "identity_source" in result["msg"]:
            sources.append(result["msg"]["identity_source"])
            continue
        msg = str(result.get("msg", ""))
        if msg.startswith("probe="):
            out[host] = {**out.get(host, {}), **parse_probe(msg[len("probe=") :])}
        elif msg.startswith("reached_after="):
            out.setdefault(host, {})["reached_after"] = float(msg.split("=", 1)[1])
    assert sorted(out) == sorted(clones), f"probes from {sorted(out)}, want {clones}\n{said(proc)}"
    # a sealed template: no clone had an offline reset, on the first run or read back on a rerun
    assert sources == [dict.fromkeys(clones, "sealed-template")], f"identity_source: {sources}\n{said(proc)}"
    return out


def test_4_fleet_clones_boot_and_answer_over_ssh(lab):
    lab.need("seal")
    t0 = time.monotonic()
    proc = lab.play("fleet.yml")
    lab.times["fleet play"] = time.monotonic() - t0
    assert proc.returncode == 0, said(proc)
    stats = recap(proc.stdout)
    assert set(stats) == {"localhost", *lab.clones}, said(proc)
    assert all(s["failed"] == 0 and s["unreachable"] == 0 for s in stats.values()), said(proc)
    lab.facts["clones"] = _fleet_facts(proc, lab.clones)
    reached = [f["reached_after"] for f in lab.facts["clones"].values() if "reached_after" in f]
    if reached:
        lab.times["clones start to SSH (slowest)"] = max(reached)
    lab.done.append("fleet")


def test_5_each_clone_is_itself(lab):
    lab.need("fleet")
    tpl, clones = lab.facts["template"], lab.facts["clones"]
    problems = []
    for name, f in sorted(clones.items()):
        if f.get("hostname") != name:
            problems.append(f"{name}: hostname is {f.get('hostname')!r}")
        if f.get("sshd") != "active":
            problems.append(f"{name}: sshd is {f.get('sshd')!r}")
        if not re.fullmatch(r"[0-9a-f]{32}", f.get("machine_id", "")) or f["machine_id"] == tpl["machine_id"]:
            problems.append(f"{name}: machine-id {f.get('machine_id')!r} (template's: {tpl['machine_id']})")
        if not f["hostkey"] or set(f["hostkey"]) & set(tpl["hostkey"]):
            problems.append(f"{name}: SSH host keys {f['hostkey']} (template's: {tpl['hostkey']})")
        if f.get("dpkg_log") not in ("absent", "0"):
            problems.append(f"{name}: /var/log/dpkg.log still has {f.get('dpkg_log')} bytes of the template's")
        if tpl["machine_id"] in f["journal"]:
            problems.append(f"{name}: the template's journal /var/log/journal/{tpl['machine_id']} is still there")
        seeded = name in lab.clones[:2]
        want_note = f"seeded {name}" if seeded else "absent"
        if f.get("class_note") != want_note:
            problems.append(f"{name}: /etc/class-note is {f.get('class_note')!r}, want {want_note!r}")
        want_status = "done" if seeded else "disabled"
        if f.get("cloud_init") != want_status:
            problems.append(f"{name}: cloud-init status {f.get('cloud_init')!r}, want {want_status!r}")
    ids = [f.get("machine_id") for f in clones.values()]
    if len(set(ids)) != len(ids):
        problems.append(f"machine-ids not distinct: {ids}")
    keys = [k for f in clones.values() for k in f["hostkey"]]
    if len(set(keys)) != len(keys):
        problems.append(f"SSH host keys shared between clones: {keys}")
    assert not problems, "\n".join(problems) + f"\n\ntemplate: {tpl}\nclones: {json.dumps(clones, indent=1)}"


def test_6_rerun_changes_nothing(lab):
    lab.need("fleet")
    for book in ("seal.yml", "fleet.yml"):
        proc = lab.play(book)
        assert proc.returncode == 0, said(proc)
        stats = recap(proc.stdout)
        changed = {h: s["changed"] for h, s in stats.items() if s["changed"] or s["failed"] or s["unreachable"]}
        assert not changed, f"{book} rerun: {stats}\n{said(proc)}"
        if book == "fleet.yml":
            again = _fleet_facts(proc, lab.clones)
            for name, f in lab.facts["clones"].items():
                for key in ("hostname", "machine_id", "hostkey", "class_note"):
                    assert again[name].get(key) == f.get(key), (name, key, again[name].get(key), f.get(key))


def test_6b_a_key_put_in_offline_lets_the_operator_in_after_the_next_boot(lab):
    """Issue 29: kvm_customize adds a NEW key to root's authorized_keys of a shut-off clone; after its next boot
    SSH with that key (and only that one offered) logs in, inside the NetHost's namespace."""
    lab.need("fleet")
    name = lab.clones[2]  # the clone with no cloud-init seed: nothing at boot rewrites authorized_keys
    key = lab.tmp / "offline-key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "offline-edit", "-f", str(key)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pub = key.with_suffix(".pub").read_text().strip()
    t0 = time.monotonic()
    uri = lab.nh.uri
    down = harness.run_module("kvm_domain", dict(name=name, state="shutdown", uri=uri), host=lab.nh)
    assert not down.get("failed"), down.get("msg")
    edit = dict(
        domain=name, uri=uri, force_tcg="yes", mounts={"/dev/sda": "/"}, authorized_keys=[dict(user="root", keys=[pub])]
    )
    done = harness.run_module("kvm_customize", edit, host=lab.nh)
    assert done.get("changed") is True and not done.get("failed"), done
    assert harness.run_module("kvm_customize", edit, host=lab.nh, check=True)["changed"] is False
    up = harness.run_module("kvm_domain", dict(name=name, state="running", uri=uri), host=lab.nh)
    assert not up.get("failed"), up.get("msg")
    conn = lab.nh.connect()
    try:
        dom = conn.lookupByName(name)
        source = etree.fromstring(dom.XMLDesc(0)).find("devices/serial/source")
        serial = Path(source.get("path") if source is not None else "/nonexistent")
        address = realguest.lease_address(dom, time.monotonic() + BOOT_TIMEOUT)
    finally:
        conn.close()
    try:
        realguest.wait_for_ssh(lab.nh, str(key), address, time.monotonic() + BOOT_TIMEOUT)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\nserial log of {name}:\n{_serial_tail(serial)}")
    proc = realguest.ssh(lab.nh, str(key), address, "id -un; cat /root/.ssh/authorized_keys")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "root" and pub in lines[1:], proc.stdout
    lab.times["offline key: shutdown, edit, boot to SSH"] = time.monotonic() - t0


def test_7_teardown_leaves_the_template(lab):
    lab.need("network", "template")
    proc = lab.play("teardown.yml")
    assert proc.returncode == 0, said(proc)
    conn = lab.nh.connect()
    try:
        assert [d.name() for d in conn.listAllDomains()] == [lab.template]
        assert lab.network not in [n.name() for n in conn.listAllNetworks()]
    finally:
        conn.close()
    left = sorted(p.name for p in lab.nh.images.iterdir() if not p.name.endswith(".log"))
    assert left == ["initrd.img", "tpl.qcow2", "vmlinuz"], left  # the template's own files, nothing of a clone
