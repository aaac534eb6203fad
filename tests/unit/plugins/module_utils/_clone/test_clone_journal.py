"""kvm_clone's intent journal: what an interrupted run left is recognised by its record, and only then.

A run killed at a given instant is simulated by what it leaves: the intent it wrote
first and the files it had made. (tests/integration/test_clone_crash.py kills a real
module process with SIGKILL.) libvirt's test:///default driver, real qcow2 files.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import Journal
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict
from tests import fakes

URI = fakes.URI
TPL = "ut-jr-tpl"


@pytest.fixture
def env(conn, tmp_path):
    (tmp_path / "images").mkdir()
    base = fakes.make_template(conn, tmp_path / "images", TPL)
    return dict(dir=base.parent, journal=str(tmp_path) + "-journal")


def clone(conn, env, check=False, **params):
    params = dict(dict(template=TPL, identity={"operations": []}), **params)
    m = fakes.clone_manager(conn, env["dir"].parent, check, **params)
    return m.run(), m


def files(env) -> list[str]:
    return sorted(p.name for p in env["dir"].iterdir())


def test_a_run_killed_after_making_files_is_finished_by_the_next(conn, env):
    disk = env["dir"] / "ut-jr-a.qcow2"
    seed_tmp = env["dir"] / ".ut-jr-a-cidata.iso.tmp-x1y2"
    # what a run killed between qemu-img and define leaves: its intent, a disk, a seed builder's temp dir
    seed = env["dir"] / "ut-jr-a-cidata.iso"  # listed; only its builder's temp dir was made
    Journal(env["journal"], URI).write(
        "create", "ut-jr-a", "00000000-0000-4000-8000-000000000001", [str(disk), str(seed)]
    )
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    seed_tmp.mkdir()
    (seed_tmp / "meta-data").write_text("{}")

    check, m = clone(conn, env, check=True, clones=["ut-jr-a", "ut-jr-b"])
    assert check["recovered"] == [dict(name="ut-jr-a", op="create", removed=[str(disk), str(seed_tmp)], kept=[])]
    assert any("would remove its leftovers" in w for w in m.warnings)
    assert files(env) == [".ut-jr-a-cidata.iso.tmp-x1y2", "base.qcow2", "ut-jr-a.qcow2"]  # check mode: untouched

    real, m = clone(conn, env, clones=["ut-jr-a", "ut-jr-b"])
    assert real["recovered"][0]["removed"] == [str(disk), str(seed_tmp)]
    assert files(env) == ["base.qcow2", "ut-jr-a.qcow2", "ut-jr-b.qcow2"]
    assert {"ut-jr-a", "ut-jr-b"} <= {d.name() for d in conn.listAllDomains()}
    assert os.listdir(env["journal"]) == []  # every intent done
    again, _m = clone(conn, env, clones=["ut-jr-a", "ut-jr-b"])
    assert again["changed"] is False and "recovered" not in again


def test_a_file_in_the_way_without_an_intent_is_still_refused(conn, env):
    disk = env["dir"] / "ut-jr-a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    Journal(env["journal"], "qemu:///other").write("create", "ut-jr-a", None, [str(disk)])  # another URI's
    with pytest.raises(Conflict, match=r"already exists; it was not created by virtops\.kvm"):
        clone(conn, env, name="ut-jr-a")
    assert disk.exists()


def test_an_intent_whose_clone_was_defined_is_dropped_and_its_files_kept(conn, env):
    real, _m = clone(conn, env, name="ut-jr-a")
    uuid = real["clones"][0]["uuid"]
    disk = env["dir"] / "ut-jr-a.qcow2"
    # killed after define, before the intent was removed
    Journal(env["journal"], URI).write("create", "ut-jr-a", uuid, [str(disk)])
    again, _m = clone(conn, env, name="ut-jr-a")
    assert again["changed"] is False and "recovered" not in again
    assert disk.exists() and os.listdir(env["journal"]) == []


def test_an_absent_killed_after_undefine_deletes_its_files_on_the_next_run(conn, env):
    real, _m = clone(conn, env, clones=["ut-jr-a", "ut-jr-b"])
    a = conn.lookupByName("ut-jr-a")
    disk = env["dir"] / "ut-jr-a.qcow2"
    # killed after the domain was undefined, before its disk was deleted
    Journal(env["journal"], URI).write("remove", "ut-jr-a", real["clones"][0]["uuid"], [str(disk)])
    a.undefine()
    r, _m = clone(conn, env, clones=["ut-jr-b"])  # another task leaves it alone
    assert "recovered" not in r and disk.exists()
    r, m = clone(conn, env, clones=["ut-jr-a"], state="absent")  # the rerun of the absent finishes it
    assert r["recovered"] == [dict(name="ut-jr-a", op="remove", removed=[str(disk)], kept=[])]
    assert files(env) == ["base.qcow2", "ut-jr-b.qcow2"]
    assert any("while removing it" in w for w in m.warnings)


def test_a_leftover_another_domain_uses_is_kept(conn, env):
    clone(conn, env, name="ut-jr-a")
    disk = env["dir"] / "ut-jr-a.qcow2"
    # a forged or stale intent naming a file a defined domain uses: never deleted
    Journal(env["journal"], URI).write("remove", "ut-jr-gone", None, [str(disk)])
    r, m = clone(conn, env, clones=["ut-jr-a", {"name": "ut-jr-gone", "state": "absent"}])
    assert r["recovered"] == [dict(name="ut-jr-gone", op="remove", removed=[], kept=[str(disk)])]
    assert disk.exists() and any("something uses them" in w for w in m.warnings)
