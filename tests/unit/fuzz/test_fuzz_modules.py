"""Every module, fuzzed through its real AnsibleModule and run_module against test:///default (fuzz_harness.py)."""

from __future__ import annotations

import os
import shutil
import tempfile

import fuzz_harness as fh
import fuzz_strategies as fs
import pytest
from hypothesis import example, given, seed
from hypothesis import strategies as st


@pytest.fixture
def base(tmp_path):
    """Where the example's sandbox lives: tmpfs when there is one (thousands of small writes), else tmp_path."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="virtops-fuzz-", dir="/dev/shm")
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path)


@pytest.mark.parametrize("name", fh.module_names())
def test_module_fuzz(name, base, monkeypatch):
    fh.skip_known_bad(name)
    kwargs = fh.argument_spec(name)
    runner = fh.Runner(name, base, monkeypatch)
    try:

        @seed(fh.target_seed(name))
        @fh.fuzz_settings(name)
        @given(
            args=fs.for_spec(name, kwargs),
            check_mode=st.booleans(),
            diff=st.booleans(),
            setups=st.lists(st.sampled_from(list(fh.SETUPS)), unique=True, max_size=4),
        )
        def fuzz(args, check_mode, diff, setups):
            runner.run(args, check_mode, diff, setups)

        for known in fh.REGRESSIONS.get(name, []):
            fuzz = example(args=known, check_mode=False, diff=False, setups=[])(fuzz)

        fuzz()
    finally:
        runner.close()
    leaks = runner.driver.leaks
    assert not leaks, f"test:///default kept state after every connection closed: {leaks[:3]}"


def test_the_walls_are_up(tmp_path, monkeypatch):
    """The fakes reach the product: its sleeps/clocks/kill defaults were replaced, its seams pointed at the sandbox."""
    runner = fh.Runner("kvm_domain", str(tmp_path), monkeypatch)
    try:
        assert runner.replaced_defaults >= 4
        from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
        from ansible_collections.virtops.kvm.plugins.module_utils._host.manager import HostManager
        from ansible_collections.virtops.kvm.plugins.module_utils._migrate.manager import MigrateManager
        from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM

        assert MigrateManager.SEAMS["clock"] is not SYSTEM  # kvm_migrate times its transfers on the one seam

        assert CloneManager.SEAMS["journal_dir"].startswith(runner.sb)
        assert HostManager.SEAMS["root"].startswith(runner.sb)
        runner.guard.install(runner.sb)
        try:
            with pytest.raises(PermissionError):
                open("/etc/virtops-fuzz-must-not-exist", "w")
            with open(os.path.join(runner.sb, "inside"), "w") as f:
                f.write("ok")
        finally:
            runner.guard.uninstall()
        assert runner.guard.violations == ["open('w') '/etc/virtops-fuzz-must-not-exist'"]
        assert not os.path.exists("/etc/virtops-fuzz-must-not-exist")
    finally:
        runner.close()
