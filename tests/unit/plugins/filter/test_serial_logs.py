"""virtops.kvm.serial_logs (plugins/filter/serial_logs.py): where each domain's serial console is logged."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.serial_logs import FilterModule, serial_logs

MINE = {"created_by": "virtops.kvm", "template": "tpl", "mode": "overlay", "created_disks": []}


def dom(name: str, provenance=..., **extra) -> dict:
    """A domain as kvm_domain_info returns it (only the keys the filters read); made by kvm_clone from "tpl"."""
    return {"name": name, "provenance": dict(MINE) if provenance is ... else provenance, **extra}


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"serial_logs": serial_logs}


def console(device="serial", type_="file", path="/img/x.log") -> dict:
    return {"device": device, "type": type_, "path": path, "target_type": "isa-serial", "port": "0"}


def test_serial_logs_first_file_serial_per_domain():
    domains = [
        dom(
            "a",
            consoles=[console(type_="pty", path="/dev/pts/3"), console(path="/img/a.log"), console(path="/img/a2.log")],
        ),
        dom("b", consoles=[console(device="console", path="/img/b-console.log"), console(path="/img/b.log")]),
    ]
    assert serial_logs(domains) == {"a": "/img/a.log", "b": "/img/b.log"}


def test_serial_logs_a_pty_logged_to_a_file_is_its_log():
    logged = dict(console(type_="pty", path="/dev/pts/4"), log="/var/log/libvirt/qemu/c-console.log")
    domains = [dom("c", consoles=[console(device="console", type_="pty", path=None), logged])]
    assert serial_logs(domains) == {"c": "/var/log/libvirt/qemu/c-console.log"}


@pytest.mark.parametrize(
    "consoles",
    [
        None,
        [],
        [console(type_="pty", path="/dev/pts/1")],
        [console(device="console", path="/img/c.log")],
        [console(path=None)],
        [console(path="")],
        [{"device": "serial", "type": "file"}],
    ],
)
def test_serial_logs_domains_without_a_file_serial_are_left_out(consoles):
    assert serial_logs([dom("a", consoles=consoles)]) == {}


def test_serial_logs_without_consoles_key_and_empty():
    assert serial_logs([{"name": "a"}]) == {}
    assert serial_logs([]) == {}


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        (None, "the domains must be a list, got null"),
        ({"name": "a"}, "the domains must be a list, got a dict"),
        ([None], r"the domains\[0\] must be a dict, got null"),
        ([{"consoles": []}], r"the domains\[0\] needs a non-empty string 'name', got null"),
        ([dom("a", consoles="pty")], "the consoles of 'a' must be a list, got a string"),
        ([dom("a", consoles=["/img/a.log"])], "console 0 of 'a' must be a dict, got a string"),
    ],
)
def test_serial_logs_bad_input(domains, message):
    with pytest.raises(AnsibleFilterError, match=f"^serial_logs: {message}"):
        serial_logs(domains)
