"""The fleet filters as the role calls them: by FQCN, through Ansible's templating (lazy vars, null values)."""

from __future__ import annotations

PLAYBOOK = r"""
- name: The fleet filters through Ansible
  hosts: localhost
  gather_facts: false
  vars:
    clones:
      - {name: web-1, memory: 512, state: running}
      - {name: web-2, vcpus: 2, uuid: "{{ wanted_uuid }}", macs: null}
    wanted_uuid: 16a16955-5bad-4175-b74c-78069b24e361
    existing: "{{ infos | map(attribute='name') | list }}"
    infos:
      - name: web-1
        provenance: {created_by: virtops.kvm, template: tpl}
        consoles: [{device: serial, type: pty, path: /dev/pts/1}, {device: serial, type: file, path: /i/w1.log}]
      - name: web-9
        provenance: {created_by: virtops.kvm, template: tpl}
        consoles: []
      - name: web2-x
        provenance: {created_by: virtops.kvm, template: tpl}
      - name: web-hand
        provenance: null
    template_xml: "<domain type='qemu'><description><name>no</name></description><name> tpl </name></domain>"
  tasks:
    - name: Every filter gives what the role relies on
      ansible.builtin.assert:
        that:
          - "specs == [{'name': 'web-1'}, {'name': 'web-2', 'uuid': wanted_uuid, 'vcpus': 2}]"
          - unlisted == ['web-9']
          - template_name == 'tpl'
          - "logs == {'web-1': '/i/w1.log'}"
      vars:
        specs: "{{ clones | virtops.kvm.fleet_clone_specs(existing) }}"
        template_name: "{{ template_xml | virtops.kvm.domain_name_of }}"
        unlisted: "{{ infos | virtops.kvm.fleet_unlisted('web', clones | map(attribute='name'), template_name) }}"
        logs: "{{ infos | virtops.kvm.serial_logs }}"

    - name: Bad input fails the task with the filter's message
      ansible.builtin.debug:
        msg: "{{ infos | virtops.kvm.fleet_unlisted('', [], 'tpl') }}"
      register: bad
      ignore_errors: true

    - name: The message names the filter and the problem
      ansible.builtin.assert:
        that:
          - bad is failed
          - "'fleet_unlisted: fleet_name must be a non-empty string' in bad.msg"
"""


def test_filters_by_fqcn_in_a_playbook(tmp_path, ansible_cli):
    playbook = tmp_path / "filters.yml"
    playbook.write_text(PLAYBOOK)
    proc = ansible_cli("ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook))
    assert "ok=3" in proc.stdout and "failed=0" in proc.stdout and "ignored=1" in proc.stdout, proc.stdout[-4000:]
