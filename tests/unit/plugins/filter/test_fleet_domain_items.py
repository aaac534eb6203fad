"""The kvm_fleet role's batch filter (plugins/filter/fleet_domain_items.py): its clones as kvm_domain's ``domains``."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_domain_items import FilterModule, fleet_domain_items

ROOT = Path(__file__).resolve().parents[4]
CLONES = [
    {"name": "f-a", "memory": 512, "macs": ["52:54:00:aa:bb:cc"], "uuid": "u1"},
    {"name": "f-b", "state": "shutdown", "vcpus": 2, "autostart": False},
    {"name": "f-c", "state": "running", "memory": None},
]


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"fleet_domain_items": fleet_domain_items}


def test_items_keep_order_and_only_the_keys_kvm_domain_takes():
    assert fleet_domain_items(CLONES) == [
        {"name": "f-a", "memory": 512},
        {"name": "f-b", "state": "shutdown", "vcpus": 2, "autostart": False},
        {"name": "f-c", "state": "running"},
    ]


def test_only_the_named_clones_and_the_default_state():
    assert fleet_domain_items(CLONES, ["f-c", "f-a", "other"], "present") == [
        {"name": "f-a", "memory": 512, "state": "present"},
        {"name": "f-c", "state": "running"},
    ]
    assert fleet_domain_items(CLONES, []) == []


def test_a_forced_state_wins_over_each_clones_own():
    assert [i["state"] for i in fleet_domain_items(CLONES, None, "present", state="running")] == ["running"] * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "the clones must be a list"),
        (([{"memory": 1}],), "needs a non-empty string 'name'"),
        ((CLONES, "f-a"), "names must be a list"),
        ((CLONES, None, ""), "default_state must be a state name or null"),
        ((CLONES, None, None, 3), "state must be a state name or null"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        fleet_domain_items(*args)


PLAYBOOK = r"""
- name: The batch filter through Ansible
  hosts: localhost
  gather_facts: false
  vars:
    clones:
      - {name: w-1, memory: 512}
      - {name: w-2, state: shutdown, macs: null}
    defined: "{{ ['w-2', 'w-1'] }}"
  tasks:
    - name: The role's two uses give what kvm_domain takes
      ansible.builtin.assert:
        that:
          - "states == [{'name': 'w-1', 'memory': 512, 'state': 'running'}, {'name': 'w-2', 'state': 'shutdown'}]"
          - "first_boot == [{'name': 'w-2', 'state': 'running'}]"
      vars:
        states: "{{ clones | virtops.kvm.fleet_domain_items(defined, 'running') }}"
        first_boot: "{{ clones | virtops.kvm.fleet_domain_items(['w-2'], state='running') }}"
"""


def test_the_filter_by_fqcn_in_a_playbook(tmp_path, ansible_cli):
    playbook = tmp_path / "batch.yml"
    playbook.write_text(PLAYBOOK)
    proc = ansible_cli("ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook))
    assert "ok=1" in proc.stdout and "failed=0" in proc.stdout, proc.stdout[-4000:]
