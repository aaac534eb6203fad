"""Every filter of plugins/filter/, fuzzed: for any input it returns or raises AnsibleFilterError, nothing else.

The inputs are shaped like what the kvm_fleet role passes (clone lists, kvm_host_info hosts, kvm_domain_info
domains, domain XML) with hostile values in every field, plus anything at all in any argument.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import zlib
from pathlib import Path

import fuzz_harness as fh
import fuzz_strategies as fs
import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, seed
from hypothesis import strategies as st


def filters() -> dict:
    """Every filter the collection ships: name -> function."""
    out = {}
    for path in sorted(glob.glob(str(fh.ROOT / "plugins/filter/*.py"))):
        mod = importlib.import_module(f"{fh.COLLECTION}.filter.{Path(path).stem}")
        if hasattr(mod, "FilterModule"):
            out.update(mod.FilterModule().filters())
    return out


NAME = st.one_of(st.sampled_from(["web-1", "web-2", "db-1", "fleet-1", "hv1", "hv2", ""]), fs.text())
COUNT = st.one_of(fs.integers(), st.sampled_from(["12", " 3 ", "-1", "abc", "1.5", "", True, 1.5, None]))
STATES = st.sampled_from(["present", "running", "shutdown", "absent", "", "bogus", None, 5])


def clone() -> st.SearchStrategy:
    return st.one_of(
        NAME,
        st.fixed_dictionaries(
            {"name": NAME},
            optional={
                "host": st.one_of(st.sampled_from(["hv1", "hv2", "hv3"]), fs.jsonish(0)),
                "group": st.one_of(st.sampled_from(["g1", "g2"]), fs.jsonish(0)),
                "memory": COUNT,
                "vcpus": COUNT,
                "state": STATES,
                "autostart": st.one_of(st.booleans(), fs.jsonish(0)),
                "macs": fs.jsonish(1),
                "uuid": st.sampled_from(fs.UUIDS),
                "ip": st.sampled_from(fs.IPS),
                "hostname": fs.text(),
                "files": fs.jsonish(1),
                "cloud_init": fs.jsonish(1),
                "extra": fs.jsonish(1),
            },
        ),
        fs.jsonish(1),
    )


def host() -> st.SearchStrategy:
    return st.one_of(
        st.fixed_dictionaries(
            {"name": st.one_of(st.sampled_from(["hv1", "hv2", "hv3"]), NAME)},
            optional={
                "reachable": st.one_of(st.booleans(), fs.jsonish(0)),
                "drained": st.one_of(st.booleans(), fs.jsonish(0)),
                "domains": st.one_of(st.lists(NAME, max_size=4), fs.jsonish(1)),
                **{k: COUNT for k in ("cpus", "memory_total_mib", "memory_free_mib", "vcpus_allocated")},
                "memory_allocated_mib": COUNT,
            },
        ),
        fs.jsonish(1),
    )


def domain() -> st.SearchStrategy:
    provenance = st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "created_by": st.sampled_from(["virtops.kvm", "other", None, 5]),
                "template": st.one_of(st.sampled_from(["base", "tmpl"]), fs.jsonish(0)),
            },
        ),
        fs.jsonish(1),
    )
    console = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "device": st.sampled_from(["serial", "console", None, 5]),
                "type": st.sampled_from(["file", "pty", None]),
                "path": st.one_of(st.sampled_from(["/var/log/x.log", ""]), fs.jsonish(0)),
            },
        ),
        fs.jsonish(0),
    )
    return st.one_of(
        st.fixed_dictionaries(
            {"name": NAME},
            optional={"provenance": provenance, "consoles": st.one_of(st.lists(console, max_size=3), fs.jsonish(1))},
        ),
        fs.jsonish(1),
    )


ANY = fs.jsonish(2)
NAMES = st.one_of(st.lists(NAME, max_size=4), ANY)
XML = st.one_of(fs.domain_xml(), fs.network_xml(), fs.text(), st.binary(max_size=40), ANY)

# Base images as kvm_fleet gives them. No src names a regular file, so the fuzz never hashes a real file or
# writes the controller's digest cache (tests/unit/plugins/filter/test_fleet_image_probes.py does, in tmp).
SRC = st.one_of(st.sampled_from(["/nonexistent/base.qcow2", "base.qcow2", "/dev/null", "/", ""]), ANY)
DEST = st.one_of(st.sampled_from(["/var/lib/libvirt/images/base.qcow2", "/var/lib//images/b.qcow2", "rel", ""]), ANY)
SHA = st.one_of(st.sampled_from(["0" * 64, "sha256:" + "A" * 64, "nope"]), ANY)
IMAGES = st.one_of(
    st.lists(st.fixed_dictionaries({"src": SRC, "dest": DEST}, optional={"checksum": SHA}), max_size=3), ANY
)
PROBED = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"dest": DEST, "settled": st.one_of(st.booleans(), ANY), "sha256": st.one_of(st.none(), SHA)},
                optional={"size": COUNT, "reason": ANY},
            ),
            ANY,
        ),
        max_size=3,
    ),
    ANY,
)

# Per filter: a strategy for its positional and keyword arguments.
SHAPES = {
    "fleet_placement": st.tuples(
        st.one_of(st.lists(clone(), max_size=5), ANY),
        st.one_of(st.lists(host(), max_size=4), ANY),
    ).flatmap(
        lambda a: st.fixed_dictionaries(
            {},
            optional={
                "rule": st.one_of(st.sampled_from(["spread", "resources"]), ANY),
                "replace_unreachable": st.one_of(st.booleans(), ANY),
                "defaults": st.one_of(
                    st.fixed_dictionaries({}, optional={"memory": COUNT, "vcpus": COUNT, "disk": COUNT}), ANY
                ),
            },
        ).map(lambda kw: (a, kw))
    ),
    "fleet_clone_specs": st.tuples(st.one_of(st.lists(clone(), max_size=4), ANY), NAMES).map(lambda a: (a, {})),
    "fleet_unlisted": st.tuples(
        st.one_of(st.lists(domain(), max_size=4), ANY),
        st.one_of(st.sampled_from(["fleet", "web"]), ANY),
        NAMES,
        st.one_of(st.none(), st.sampled_from(["base", "tmpl"]), ANY),
    ).map(lambda a: (a, {})),
    "domain_name_of": XML.map(lambda x: ((x,), {})),
    "fleet_image_probes": IMAGES.map(lambda x: ((x,), {})),
    "fleet_images_split": st.tuples(IMAGES, PROBED).map(lambda a: (a, {})),
    "serial_logs": st.one_of(st.lists(domain(), max_size=4), ANY).map(lambda x: ((x,), {})),
    "hosts_seen": st.tuples(
        st.one_of(st.lists(NAME, max_size=4), ANY),
        st.one_of(
            st.dictionaries(NAME, st.one_of(st.fixed_dictionaries({"info": st.one_of(host(), ANY)}), ANY), max_size=3),
            ANY,
        ),
        st.one_of(st.just("info"), ANY),
        NAMES,
    ).map(lambda a: (a, {})),
    "fleet_report": st.tuples(
        st.one_of(
            st.fixed_dictionaries(
                {k: st.one_of(st.dictionaries(NAME, NAME, max_size=3), ANY) for k in ("placement", "new", "existing")},
                optional={
                    "hosts": st.one_of(st.dictionaries(NAME, st.one_of(st.lists(clone(), max_size=3), ANY)), ANY),
                    **{k: st.one_of(st.lists(ANY, max_size=3), ANY) for k in ("held", "unreachable", "warnings")},
                },
            ),
            ANY,
        ),
        NAMES,
        NAMES,
    ).map(lambda a: (a, {})),
    "fleet_report_lines": st.tuples(
        st.one_of(
            st.fixed_dictionaries(
                {k: st.one_of(st.dictionaries(NAME, NAME, max_size=3), ANY) for k in ("placement", "new")},
                optional={
                    **{k: st.one_of(st.dictionaries(NAME, NAMES, max_size=3), ANY) for k in ("missing", "unconverged")},
                    **{k: st.one_of(st.lists(ANY, max_size=3), ANY) for k in ("held", "warnings")},
                },
            ),
            ANY,
        ),
        NAMES,
    ).map(lambda a: (a, {})),
    "fleet_domain_items": st.tuples(st.one_of(st.lists(clone(), max_size=4), ANY)).flatmap(
        lambda a: st.fixed_dictionaries(
            {}, optional={"names": st.one_of(st.none(), NAMES), "default_state": STATES, "state": STATES}
        ).map(lambda kw: (a, kw))
    ),
}


def generic(fn) -> st.SearchStrategy:
    """Any JSON values for every parameter of a filter this file has no shape for."""
    params = list(inspect.signature(fn).parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty]
    return st.tuples(*[ANY for _param in required]).map(lambda a: (a, {}))


@pytest.mark.parametrize("name", sorted(filters()))
def test_filter_fuzz(name):
    fh.skip_known_bad(name)
    fn = filters()[name]
    strategy = SHAPES[name] if name in SHAPES else generic(fn)

    @seed(zlib.crc32(name.encode()))
    @fh.fuzz_settings(name)
    @given(call=strategy)
    def fuzz(call):
        args, kwargs = call
        broken = True
        try:
            fn(*args, **kwargs)
            broken = False
        except AnsibleFilterError:
            broken = False
        finally:
            fh.count(name, broken, outcome=None)

    fuzz()


def test_every_filter_has_a_shape():
    """A new filter gets generic inputs; give it a shape here so its real paths run too."""
    missing = sorted(set(filters()) - set(SHAPES))
    assert not missing or os.environ.get("VIRTOPS_FUZZ_GENERIC_OK"), f"filters without a shape in SHAPES: {missing}"
