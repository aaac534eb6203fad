"""kvm_clone and external snapshots: a template whose disk is a snapshot layer is cloned only from a named layer.

The template's external snapshot is recorded as libvirt records one (REDEFINE on
the test:///default driver, files made by qemu-img in tmp_path).
"""

from __future__ import annotations

import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._clone.template import load_template
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan
from tests.fakes import runner

TPL = "ut-layered"


def xml(name: str, disk: str) -> str:
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>"""


@pytest.fixture
def layered(conn, tmp_path):
    """Template on base.qcow2, then external snapshot 'gold': its disk is now the overlay above base."""
    base, top = tmp_path / "base.qcow2", tmp_path / f"{TPL}.vda.gold.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)], check=True)
    dom = conn.defineXML(xml(TPL, str(base)))
    frozen = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    dom = conn.defineXML(xml(TPL, str(top)).replace("<memory", f"<uuid>{dom.UUIDString()}</uuid><memory"))
    dom.snapshotCreateXML(
        "<domainsnapshot><name>gold</name><state>shutoff</state><creationTime>10</creationTime>"
        "<memory snapshot='no'/><disks>"
        f"<disk name='vda' snapshot='external' type='file'><source file='{top}'/></disk></disks>{frozen}"
        "</domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
    )
    return base, top


def test_a_template_on_a_snapshot_layer_is_refused_unless_told_which(conn, layered):
    _base, top = layered
    with pytest.raises(InvalidInput, match=r"is an external snapshot layer.*template_snapshot: one of gold"):
        load_template(HostScan.take(conn), runner, TPL, None)
    # through the module's manager too, before anything is created
    params = dict(template=TPL, name="ut-c1", domain_type="qemu", dest_dir=str(top.parent))
    with pytest.raises(InvalidInput, match="external snapshot layer"):
        CloneManager(
            params,
            _Held(conn),
            False,
            runner=runner,
            lock_path=str(top.parent / "lock"),
            journal_dir=str(top.parent) + "-journal",
        ).run()
    assert "ut-c1" not in [d.name() for d in conn.listAllDomains()]


def test_the_named_layer_is_what_the_clones_stand_on(conn, layered):
    base, _top = layered
    tpl = load_template(HostScan.take(conn), runner, TPL, None, layer="gold")
    assert tpl["disks"] == [dict(target="vda", path=str(base), format="qcow2")]
    assert dx.disks(tpl["root"])[0]["path"] == str(base)
    # the template's own definition is not changed by it
    root = dx.parse(conn.lookupByName(TPL).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert dx.disks(root)[0]["path"].endswith(".vda.gold.qcow2")


def test_an_unknown_layer_or_template_xml_is_refused(conn, layered):
    with pytest.raises(InvalidInput, match=r"no external snapshot 'silver'.*it has: gold"):
        load_template(HostScan.take(conn), runner, TPL, None, layer="silver")
    with pytest.raises(InvalidInput, match="needs a template domain"):
        load_template(HostScan.take(conn), runner, None, xml("ut-x", "/none.qcow2"), layer="gold")


def test_templates_without_snapshots_are_as_before(conn, tmp_path):
    disk = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    conn.defineXML(xml("ut-plain", str(disk)))
    tpl = load_template(HostScan.take(conn), runner, "ut-plain", None)
    assert tpl["disks"] == [dict(target="vda", path=str(disk), format="qcow2")]


class _Held:
    uri = "test:///default"

    def __init__(self, conn):
        self.conn = conn

    def close(self) -> None:
        pass
