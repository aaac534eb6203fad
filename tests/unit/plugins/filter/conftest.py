"""Run Ansible's own programs against this checkout's collection (the filters as users call them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import playbook_env

BIN = Path(sys.executable).parent


@pytest.fixture
def ansible_cli(tmp_path):
    """``ansible_cli("ansible-doc", ...)``: run one of the venv's Ansible programs; fail the test on a non-zero rc."""
    env = playbook_env(ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))

    def run(program: str, *args: str) -> subprocess.CompletedProcess:
        argv = [str(BIN / program), *args]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"{argv}: rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    return run
