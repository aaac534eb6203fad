"""meta/runtime.yml: the ``kvm`` action group (module_defaults for the whole collection) names every module."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_action_group_lists_every_module():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    modules = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("kvm_*.py"))
    assert modules, "no module found"
    assert sorted(runtime["action_groups"]["kvm"]) == modules
