"""What the kvm_clone unit tests share: test:///default, real qemu-img, a template on a blank qcow2.

Imported by the test files next to it (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import subprocess

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager

URI = "test:///default"


def runner(argv, env=None):
    """The manager's runner: a real program, an argument list, no shell."""
    p = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    return p.returncode, p.stdout, p.stderr


class Held:
    """The manager's connection, holding the test's open virConnect (or a stand-in for it)."""

    uri = URI

    def __init__(self, conn):
        self.conn = conn

    def close(self) -> None:
        pass  # the fixture closes it


def template_xml(name: str, disk: str, fmt: str = "qcow2", ifaces: int = 1) -> str:
    nics = "".join("<interface type='user'><model type='virtio'/></interface>" for _i in range(ifaces))
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk>{nics}</devices></domain>"""


def open_conn(prefixes=("ut-", "ut_")):
    """A test:///default connection and its teardown (undefines the test's domains), for a fixture."""
    c = libvirt.open(URI)

    def close() -> None:
        for dom in c.listAllDomains():
            if dom.name().startswith(prefixes):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        c.close()

    return c, close


def make_template(conn, folder, name: str, size: str = "16M"):
    """A shut-off template domain on a blank qcow2 ``folder/base.qcow2``; returns that path."""
    base = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), size], check=True)
    conn.defineXML(template_xml(name, str(base)))
    return base


def clone_manager(conn, tmp_path, check_mode: bool = False, **params) -> CloneManager:
    """A CloneManager as the module makes one, its lock and intent journal private to the test."""
    params.setdefault("domain_type", "qemu")
    seams = {k: params.pop(k) for k in ("handle_factory",) if k in params}
    return CloneManager(
        params,
        Held(conn),
        check_mode,
        runner=runner,
        lock_path=str(tmp_path / "lock"),
        journal_dir=str(tmp_path) + "-journal",
        **seams,
    )
