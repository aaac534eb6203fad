"""Every filter's documentation (plugins/filter/<name>.yml) renders and matches the filter's signature.

ansible-test's validate-modules skips filter plugins, so this is the check that the docs do not drift. Each
filter lives in the file named after it (a group of filters in the file named after the first).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[4]
FILES = sorted(p.stem for p in (ROOT / "plugins" / "filter").glob("*.py"))


def _filters_of(stem: str) -> dict:
    return importlib.import_module(f"ansible_collections.virtops.kvm.plugins.filter.{stem}").FilterModule().filters()


FILTERS = {name: fn for stem in FILES for name, fn in _filters_of(stem).items()}


def _doc(name: str) -> dict:
    return yaml.safe_load((ROOT / "plugins" / "filter" / f"{name}.yml").read_text())


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_doc_matches_signature(name):
    doc = _doc(name)
    spec = doc["DOCUMENTATION"]
    assert spec["name"] == name
    assert spec["short_description"] and spec["description"] and spec["version_added"]
    params = list(inspect.signature(FILTERS[name]).parameters.values())
    documented = ["_input", *(p.name for p in params[1:])]
    assert [p.strip() for p in spec["positional"].split(",")] == documented
    assert sorted(spec["options"]) == sorted(documented)
    for p, key in zip(params, documented):
        option = spec["options"][key]
        assert option["description"] and option["type"], key
        assert bool(option.get("required")) == (p.default is inspect.Parameter.empty), key
    assert f"virtops.kvm.{name}" in doc["EXAMPLES"]
    assert doc["RETURN"]["_value"]["description"] and doc["RETURN"]["_value"]["type"]


@pytest.mark.parametrize("stem", FILES)
def test_file_is_named_after_its_filters(stem):
    names = list(_filters_of(stem))
    assert names and names[0] == stem and all(n.startswith(stem) for n in names), (stem, names)


def test_ansible_doc_renders_every_filter(ansible_cli):
    names = [f"virtops.kvm.{name}" for name in sorted(FILTERS)]
    proc = ansible_cli("ansible-doc", "-t", "filter", "--json", *names)
    docs = json.loads(proc.stdout)
    assert sorted(docs) == names, proc.stderr
    for name in names:
        assert docs[name]["doc"]["options"]["_input"]["description"], name
        assert docs[name]["examples"], name


def test_ansible_doc_lists_every_filter(ansible_cli):
    proc = ansible_cli("ansible-doc", "-l", "-t", "filter", "virtops.kvm", "--json")
    assert sorted(json.loads(proc.stdout)) == [f"virtops.kvm.{name}" for name in sorted(FILTERS)], proc.stderr
