"""kvm_image's action plugin: the copy gets an uncompressed SSH master of its own (ansible-core's ssh_args has -C)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.action.kvm_image import ActionModule


class FakeConnection:
    def __init__(self, transport: str, ssh_args: str | None, control_path: str | None = None):
        self.transport = transport
        self.options = {"ssh_args": ssh_args, "control_path": control_path}
        self.seen: list[dict] = []

    def get_option(self, key):
        if self.transport != "ssh":
            raise KeyError(key)
        return self.options[key]

    def set_option(self, key, value):
        self.options[key] = value

    def put_file(self, src, dest):
        self.seen.append(dict(self.options))


def action_with(conn) -> ActionModule:
    action = ActionModule.__new__(ActionModule)  # only _connection is used by _uncompressed
    action._connection = conn
    return action


@pytest.mark.parametrize("control_path", [None, "%(directory)s/mine"])
def test_compression_is_left_out_of_the_copy_and_restored_after(control_path):
    conn = FakeConnection("ssh", "-C -o ControlMaster=auto -o ControlPersist=60s", control_path)
    with action_with(conn)._uncompressed():
        conn.put_file("src", "dest")
    during = conn.seen[0]
    assert during["ssh_args"].split() == ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s"]
    assert during["control_path"] == (control_path or "%(directory)s/%%C") + "-raw"
    assert conn.options == {"ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s", "control_path": control_path}


def test_restored_also_when_the_copy_fails():
    conn = FakeConnection("ssh", "-C -o ControlPersist=60s")
    with pytest.raises(OSError), action_with(conn)._uncompressed():
        raise OSError("no space")
    assert conn.options["ssh_args"] == "-C -o ControlPersist=60s" and conn.options["control_path"] is None


@pytest.mark.parametrize(("transport", "ssh_args"), [("ssh", "-o ControlPersist=60s"), ("ssh", None), ("local", None)])
def test_other_connections_and_uncompressed_ssh_are_left_alone(transport, ssh_args):
    conn = FakeConnection(transport, ssh_args)
    before = dict(conn.options)
    with action_with(conn)._uncompressed():
        conn.put_file("src", "dest")
    assert conn.seen == [before] and conn.options == before
