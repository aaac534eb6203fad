"""virtops.kvm.hosts_seen (plugins/filter/hosts_seen.py): what each hypervisor said, as fleet_placement's hosts."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.hosts_seen import FilterModule, hosts_seen

HOST = {
    "cpus": 8,
    "memory_total_mib": 32768,
    "memory_free_mib": 16384,
    "vcpus_allocated": 4,
    "memory_allocated_mib": 2048,
    "drained": False,
    "drained_moved": {},
    "hostname": "hv1.example",
}


def info(domains=("a",), **host) -> dict:
    """What kvm_host_info registers on a hypervisor (the keys this filter reads, and some it does not)."""
    return {"changed": False, "domains": list(domains), "host": {**HOST, **host}}


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"hosts_seen": hosts_seen}


def test_a_hypervisor_in_the_play_that_was_read_is_reachable():
    hostvars = {"hv1": {"hi": info(["a", "b"]), "ansible_host": "10.0.0.1"}}
    assert hosts_seen(["hv1"], hostvars, "hi", ["hv1"]) == [
        {
            "name": "hv1",
            "reachable": True,
            "domains": ["a", "b"],
            "cpus": 8,
            "memory_total_mib": 32768,
            "memory_free_mib": 16384,
            "vcpus_allocated": 4,
            "memory_allocated_mib": 2048,
            "drained": False,
        }
    ]


def test_drained_is_passed_on_and_false_when_not_given():
    hv2 = info()
    del hv2["host"]["drained"]
    hostvars = {"hv1": {"hi": info(drained=True)}, "hv2": {"hi": hv2}}
    seen = hosts_seen(["hv1", "hv2"], hostvars, "hi", ["hv1", "hv2"])
    assert [h["drained"] for h in seen] == [True, False]


@pytest.mark.parametrize(
    "hostvars, play_hosts",
    [
        pytest.param({"hv1": {"hi": info()}}, [], id="left-the-play"),
        pytest.param({"hv1": {}}, ["hv1"], id="never-read"),
        pytest.param({"hv1": {"hi": {"skipped": True}}}, ["hv1"], id="result-without-host"),
        pytest.param({"hv1": {"hi": "text"}}, ["hv1"], id="not-a-result"),
        pytest.param({}, ["hv1"], id="not-in-the-inventory"),
    ],
)
def test_other_hypervisors_are_unreachable(hostvars, play_hosts):
    assert hosts_seen(["hv1"], hostvars, "hi", play_hosts) == [{"name": "hv1", "reachable": False}]


def test_order_of_the_hypervisors_and_only_them():
    hostvars = {h: {"hi": info()} for h in ("hv1", "hv2", "hv3")}
    seen = hosts_seen(["hv3", "hv1"], hostvars, "hi", ["hv1", "hv2"])
    assert [(h["name"], h["reachable"]) for h in seen] == [("hv3", False), ("hv1", True)]
    assert hosts_seen([], hostvars, "hi", ["hv1"]) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (("hv1", {}, "hi", []), "the hypervisors must be a list, got a string"),
        (([""], {}, "hi", []), "the hypervisors[0] must be an inventory host name, got an empty string"),
        ((["hv1"], [], "hi", []), "hostvars must be a dict (Ansible's hostvars), got a list"),
        ((["hv1"], {}, "", []), "info_var must be the name of the host var"),
        ((["hv1"], {}, "hi", None), "play_hosts must be a list, got null"),
        ((["hv1"], {"hv1": {"hi": {"host": 5}}}, "hi", ["hv1"]), "hi.host of 'hv1' must be a dict"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(AnsibleFilterError, match=r"^hosts_seen: ") as err:
        hosts_seen(*args)
    assert message in str(err.value)


PLAYBOOK = r"""
- name: hosts_seen with Ansible's hostvars (lazy, templated), as the kvm_fleet and kvm_drain roles call it
  hosts: all
  gather_facts: false
  tasks:
    - name: Each hypervisor but hv3 registers what it has (a templated number, as a module result may be)
      ansible.builtin.set_fact:
        host_info: {domains: ["{{ inventory_hostname }}-a"], host: {cpus: "{{ 2 * 2 }}", memory_free_mib: 512}}
      # (ansible-core < 2.19 leaves that number a string: the assert below reads it with | int)
      when: inventory_hostname != 'hv3'

    - name: Only hv1 is reachable (hv2 counts as out of the play, hv3 was not read, hv4 is not in the inventory)
      ansible.builtin.assert:
        that:
          - seen | map(attribute='reachable') | list == [true, false, false, false]
          - seen[0].domains == ['hv1-a'] and seen[0].cpus | int == 4 and seen[0].drained == false
      vars:
        in_play: "{{ ansible_play_hosts | reject('equalto', 'hv2') | list }}"
        seen: "{{ ['hv1', 'hv2', 'hv3', 'hv4'] | virtops.kvm.hosts_seen(hostvars, 'host_info', in_play) }}"
      run_once: true
"""


def test_hostvars_in_a_playbook(tmp_path, ansible_cli):
    playbook = tmp_path / "seen.yml"
    playbook.write_text(PLAYBOOK)
    (tmp_path / "hosts").write_text("hv1\nhv2\nhv3\n")
    proc = ansible_cli("ansible-playbook", "-i", str(tmp_path / "hosts"), "-c", "local", str(playbook))
    assert "All assertions passed" in proc.stdout and "failed=1" not in proc.stdout, proc.stdout[-4000:]
