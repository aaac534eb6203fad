"""Run Ansible's own programs against this checkout's collection (the filters as users call them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent


@pytest.fixture
def ansible_cli(tmp_path):
    """``ansible_cli("ansible-doc", ...)``: run one of the venv's Ansible programs; fail the test on a non-zero rc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )

    def run(program: str, *args: str) -> subprocess.CompletedProcess:
        argv = [str(BIN / program), *args]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"{argv}: rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    return run
