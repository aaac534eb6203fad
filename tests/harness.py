"""Run a collection module the way Ansible does, without the controller.

The module is executed as ``python -m ansible_collections.virtops.kvm.plugins.modules.NAME``
in the project venv with ``{"ANSIBLE_MODULE_ARGS": ...}`` in a file, including the
``_ansible_check_mode`` / ``_ansible_diff`` flags Ansible itself sends. That is the
real module code against the real libvirt, at ~0.3 s a call instead of ~2 s for
an ad-hoc ``ansible`` run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".collections"


def module_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COLLECTIONS), env.get("PYTHONPATH", "")) if p)
    env.setdefault("LIBVIRT_DEFAULT_URI", "qemu:///system")
    if extra:
        env.update(extra)
    return env


def playbook_env(**extra: str) -> dict:
    """The environment for this venv's ``ansible-playbook``/``ansible`` against this checkout: the
    repository's ansible.cfg and collection, no ANSIBLE_* of the caller's, no colour; ``extra`` on top."""
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    env.update(extra)
    return env


def run_module(
    name: str,
    args: dict,
    check: bool = False,
    diff: bool = True,
    env: dict | None = None,
    timeout: float = 900,
    host=None,
) -> dict:
    """Run module ``name`` with ``args``; return its JSON result (``failed`` set on failure).

    ``host``: a ``nethost.NetHost`` (a ground hypervisor) to run it in, as Ansible would over SSH there: its
    files, its libvirtd (``qemu:///system``), its /run."""
    payload = dict(args)
    payload["_ansible_check_mode"] = check
    payload["_ansible_diff"] = diff
    payload.setdefault("_ansible_tmpdir", tempfile.gettempdir())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, f)
        argfile = f.name
    try:
        argv = [sys.executable, "-m", f"ansible_collections.virtops.kvm.plugins.modules.{name}", argfile]
        proc = subprocess.run(
            host.argv(argv) if host is not None else argv,
            capture_output=True,
            text=True,
            check=False,
            env=module_env(env),
            timeout=timeout,
            cwd=str(ROOT),
        )
    finally:
        os.unlink(argfile)
    out = proc.stdout.strip()
    try:
        result = json.loads(out[out.index("{") :]) if out else {}
    except ValueError:
        result = {"failed": True, "msg": f"module printed no JSON: {out!r}"}
    if not result:
        result = {"failed": True, "msg": "module printed nothing"}
    if proc.returncode != 0:
        result.setdefault("failed", True)
    result["_stderr"] = proc.stderr
    return result


def four_ways(name: str, args: dict, env: dict | None = None) -> list[dict]:
    """Run a scenario as the house style asks: check, real, again, again in check.

    Returns the four results; the caller asserts on them (see ``assert_four_ways``).
    """
    return [
        run_module(name, args, check=True, env=env),
        run_module(name, args, check=False, env=env),
        run_module(name, args, check=False, env=env),
        run_module(name, args, check=True, env=env),
    ]


def assert_four_ways(results: list[dict], first_changes: bool = True) -> None:
    check1, real1, real2, check2 = results
    for r in results:
        assert not r.get("failed"), r.get("msg")
    assert check1["changed"] is first_changes, check1
    assert real1["changed"] is first_changes, real1
    assert real2["changed"] is False, real2
    assert check2["changed"] is False, check2


def plain(value):
    """ansible-inventory's JSON without ansible-core 2.19's ``{"__ansible_unsafe": ...}`` wrappers."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def ansible_inventory(tmp_path: Path, config: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``ansible-inventory -i <tmp>/lab.libvirt.yml ARGS``, run outside the repo with this checkout's collection."""
    path = tmp_path / "lab.libvirt.yml"
    path.write_text(json.dumps(dict(plugin="virtops.kvm.libvirt", **config)))
    full = playbook_env(ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), COLUMNS="1000", **(env or {}))
    argv = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(path), *args]
    return subprocess.run(argv, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=180, check=False)
