"""Hypothesis strategies derived from an Ansible argument spec, mixed with hostile values.

``for_spec(spec, module_options, overrides)`` gives module arguments: every option of the spec by its
type (str, int, float, bool, list with ``elements``, dict with ``options``, path, raw), its ``choices``
and ``required``; optional options are left out at random. Values mix well-formed ones (names that
exist in libvirt's test:///default driver, sizes, MACs, addresses, domain/network/pool XML) with
hostile ones (control characters, leading '-', ';', '..', whitespace, unicode, empty strings, huge
and negative numbers, a wrong type now and then). Every path is under the sandbox (``@SB@``, replaced
just before the run) or relative to it (the run's working directory); never '~' or '$VAR', which
AnsibleModule would expand to outside it.
"""

from __future__ import annotations

from fuzz_sandbox import SB
from hypothesis import strategies as st

# Names that exist in test:///default, so real code paths run and not only "not found".
# (and in fuzz_harness.SETUPS: fuzz-a, snap1, vol1, fuzznet, fuzzpool, which an input may find defined).
EXISTING = [
    "test",
    "default",
    "default-pool",
    "virbr0",
    "testnet0",
    "vda",
    "diskimage1",
    "fuzz-a",
    "snap1",
    "vol1",
    "fuzznet",
    "fuzzpool",
]

HOSTILE_TEXT = [
    "",
    " ",
    "  test  ",
    "-",
    "-rf",
    "--help",
    ";",
    "a;b",
    "; rm -rf /",
    "$(id)",
    "`id`",
    "..",
    "../..",
    "/",
    "a/b",
    ".",
    "\t",
    "\n",
    "a\nb",
    "a\x01b",
    "\x00",
    "nul\x00inside",
    "\x1b[31mred",
    "\x7f",
    "é",
    "日本語",
    "\u202eevil",
    "\ufeffbom",
    "\U0001f600",
    "x" * 300,
    "%s%n",
    "{{ x }}",
    "'\"<>&",
    "]]>",
    "<x/>",
    "&amp;",
    "-1",
    "0",
    "1",
    "nan",
    "inf",
    "true",
    "null",
    "99999999999999999999T",
    "1G",
    "0.5G",
    "-1G",
    "10 MiB",
]

SIZES = [
    "1",
    "0",
    "-1",
    "1K",
    "1M",
    "10M",
    "1G",
    "1.5G",
    "0.5M",
    "1T",
    "99999999999999999999T",
    "1e3",
    "1 G",
    "1GiB",
    "1Gb",
    "G",
    "",
    "2P",
    "1E",
    "0x10",
    " 5M",
    "5M ",
    "+5M",
    "1,5G",
    "∞",
    "\uff11G",
]
MACS = [
    "52:54:00:12:34:56",
    "aa:bb:cc:dd:ee:ff",
    "52:54:00:12:34",
    "zz:zz:zz:zz:zz:zz",
    "01:00:00:00:00:00",
    "52-54-00-12-34-56",
    "5254.0012.3456",
    "",
    "ff:ff:ff:ff:ff:ff",
    "52:54:00:12:34:56:78",
]
IPS = [
    "192.168.122.10",
    "192.168.122.1",
    "192.168.122.255",
    "10.0.0.1",
    "256.1.1.1",
    "::1",
    "fe80::1",
    "fd00::10",
    "192.168.122.0/24",
    "1.2.3",
    "",
    "0.0.0.0",
    "192.168.122.2",
    "192.168.122.254",
    "localhost",
]
UUIDS = [
    "6695eb01-f6a4-8304-79aa-97f2502e193f",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "6695eb01f6a4830479aa97f2502e193f",
    "6695EB01-F6A4-8304-79AA-97F2502E193F",
    "",
]
CHECKSUMS = ["sha256:" + "0" * 64, "0" * 64, "sha256:xyz", "md5:abc", "sha256:", "F" * 64, "sha512:" + "a" * 128]
MODES = [
    "0444",
    "0644",
    "644",
    "0o644",
    "0777",
    "07777",
    "08",
    "u+rwx",
    "",
    "-1",
    "99999",
    420,
    0,
    -1,
    4095,
    10**20,
    True,
    None,
    1.5,
]
OWNERS = ["root", "nobody", "0", "65534", "99999", "no-such-user-xyz", "", "root:root", ":", "-"]

HUGE_INTS = [10**20, -(10**20), 2**31, 2**63, -(2**63), 2**64, 10**309]


def weighted(*choices: tuple) -> st.SearchStrategy:
    """``(weight, strategy)`` pairs: one_of() would not do (it drops repeated strategies, so all weigh the same)."""
    table = [strategy for weight, strategy in choices for _copy in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda i: table[i])


def text() -> st.SearchStrategy:
    """A string: an existing name, a hostile one, or any short text."""
    return st.one_of(
        st.sampled_from(EXISTING),
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=12),
        st.from_regex(r"[a-z][a-z0-9_.-]{0,15}", fullmatch=True),
    )


def integers() -> st.SearchStrategy:
    """Mostly plausible counts (so range checks pass and the work runs), sometimes huge or negative."""
    return weighted(
        (6, st.integers(min_value=0, max_value=4096)),
        (1, st.integers(min_value=-3, max_value=8)),
        (1, st.sampled_from(HUGE_INTS)),
        (1, st.integers()),
    )


def paths() -> st.SearchStrategy:
    """A path inside the sandbox: existing files and directories, new ones, hostile but contained forms."""
    names = st.sampled_from(
        [
            "images/base.qcow2",
            "images/disk.raw",
            "images/not-an-image.qcow2",
            "images",
            "file.txt",
            "upload.bin",
            "bad.xml",
            "dir",
            "dir/inner.txt",
            "empty-dir",
            "link-to-file",
            "dangling",
            "new",
            "new/deeper/file.qcow2",
            "dir/../file.txt",
            "./dir//inner.txt",
            "-rf",
            "a;b",
            " space ",
            "x" * 250,
            "é/日本",
            "nl\nname",
            "dir/",
            "",
        ]
    )
    return st.one_of(
        names.map(lambda n: f"{SB}/{n}" if n else SB),
        names.filter(bool),  # relative: the run's working directory is the sandbox
        st.from_regex(r"[a-z0-9._-]{1,12}", fullmatch=True).map(lambda n: f"{SB}/new/{n}"),
    )


def jsonish(depth: int = 2) -> st.SearchStrategy:
    """Any JSON value (what a raw option or a dict without options may get)."""
    scalars = st.one_of(st.none(), st.booleans(), integers(), st.floats(allow_nan=False), text())
    if depth <= 0:
        return scalars
    return st.one_of(
        scalars,
        st.lists(jsonish(depth - 1), max_size=3),
        st.dictionaries(text(), jsonish(depth - 1), max_size=3),
    )


# --- XML documents libvirt takes (well-formed, half-formed, junk)


def _xml_text() -> st.SearchStrategy:
    """Text for an XML element or attribute: mostly sane, sometimes not XML-compatible at all."""
    return st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        st.sampled_from(["test", "", "a\x01b", "<", "&", "'\"", "é", "x" * 100, "-1", "0", "99999999999999999999"]),
    )


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;")


@st.composite
def domain_xml(draw) -> str:
    """A domain definition: mostly one test:///default takes (so define/start/... run), sometimes broken."""
    sane = draw(st.integers(min_value=0, max_value=3)) > 0
    name = draw(st.sampled_from(["fuzz-a", "fuzz-b", "test"]) if sane else _xml_text())
    memory = draw(
        st.sampled_from(["1024", "65536"]) if sane else st.sampled_from(["0", "-1", "99999999999999999999", "abc", ""])
    )
    vcpu = draw(st.sampled_from(["1", "2"]) if sane else st.sampled_from(["0", "-1", "x", "99999"]))
    disk_path = draw(paths())
    disk = (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{_escape(disk_path)}'/><target dev='vda' bus='virtio'/></disk>"
    )
    parts = [
        f"<name>{_escape(name) if sane or draw(st.booleans()) else name}</name>",
        f"<memory unit='KiB'>{memory}</memory>",
        f"<vcpu>{vcpu}</vcpu>",
        "<os><type arch='i686'>hvm</type></os>",
        "<devices>" + (disk if draw(st.booleans()) else "") + "</devices>",
    ]
    if draw(st.booleans()):
        parts.insert(1, f"<uuid>{draw(st.sampled_from(UUIDS))}</uuid>")
    if draw(st.booleans()):
        parts.append(f"<title>{_escape(draw(_xml_text()))}</title>")
    kind = draw(st.sampled_from(["test"]) if sane else st.sampled_from(["qemu", "kvm", "xen", ""]))
    body = f"<domain type='{kind}'>{''.join(parts if sane else draw(st.permutations(parts)))}</domain>"
    if sane:
        return body
    return draw(st.one_of(st.just(body), st.sampled_from([body[: len(body) // 2], "<domain/>", "<network/>", "junk"])))


@st.composite
def network_xml(draw) -> str:
    name = draw(st.one_of(st.sampled_from(["default", "fuzznet"]), _xml_text()))
    mode = draw(st.sampled_from(["nat", "route", "open", "bridge", "isolated", "bogus"]))
    ip = draw(st.sampled_from(IPS))
    body = (
        f"<network><name>{_escape(name)}</name><forward mode='{mode}'/>"
        f"<bridge name='{_escape(draw(_xml_text()))}'/>"
        f"<ip address='{ip}' netmask='255.255.255.0'><dhcp><range start='{draw(st.sampled_from(IPS))}' "
        f"end='{draw(st.sampled_from(IPS))}'/></dhcp></ip></network>"
    )
    return draw(st.one_of(st.just(body), st.sampled_from(["<network/>", "<pool/>", body[:40], "junk", ""])))


@st.composite
def pool_xml(draw) -> str:
    name = draw(st.one_of(st.sampled_from(["default-pool", "fuzzpool"]), _xml_text()))
    kind = draw(st.sampled_from(["dir", "logical", "netfs", "fs", "bogus"]))
    body = (
        f"<pool type='{kind}'><name>{_escape(name)}</name><target><path>{_escape(draw(paths()))}</path></target></pool>"
    )
    return draw(st.one_of(st.just(body), st.sampled_from(["<pool/>", "<domain/>", body[:30], "junk", ""])))


def xml_for(option_module: str) -> st.SearchStrategy:
    if option_module == "kvm_network":
        return network_xml()
    if option_module == "kvm_pool":
        return pool_xml()
    return domain_xml()


# --- by option name: what a string option really holds

URIS = st.sampled_from(
    [
        "test:///default",
        "test:///default",
        "",
        "test:///",
        f"test:///{SB}/bad.xml",
        f"test:///{SB}/no-such.xml",
        f"test:///{SB}/file.txt",
    ]
)


def by_name(module: str, option: str) -> st.SearchStrategy | None:
    """A strategy for a str/raw option whose name says what it holds, or None (generic)."""
    if option in ("uri", "dest_uri"):
        return URIS
    if option == "migrate_uri":
        return st.sampled_from(["", "-", ";", "tcp://", f"unix:{SB}/m.sock", "test:///default"])
    if option in ("xml", "template_xml"):
        return weighted((5, xml_for(module)), (1, text()))
    if option == "size":
        return st.one_of(st.sampled_from(SIZES), text())
    if option in ("mac",):
        return st.one_of(st.sampled_from(MACS), text())
    if option in ("ip", "address", "start", "end"):
        return st.one_of(st.sampled_from(IPS), text())
    if option in ("checksum", "_sha256"):
        return st.one_of(st.sampled_from(CHECKSUMS), text())
    if option == "mode" and module == "kvm_image":
        return st.sampled_from(MODES)
    if option in ("owner", "group") and module == "kvm_image":
        return st.sampled_from(OWNERS)
    if option in ("src", "_staged", "source_path", "path"):
        return st.one_of(paths(), text()) if option == "source_path" else paths()
    if option in ("paths", "list_dirs", "hostnames", "source_devices"):
        return None
    if option == "boot_marker":
        return st.sampled_from(["VIRTOPS-GUEST-UP", "", "x" * 200, "(", "a\x01b"])
    return None


@st.composite
def clone_item(draw):
    """One entry of kvm_clone's clones: a name or a dict of its known keys (sometimes an unknown one)."""
    name = draw(st.one_of(st.sampled_from(["fuzz-c1", "fuzz-c2", "test"]), text()))
    if draw(st.booleans()):
        return name
    values = {
        "name": st.just(name),
        "memory": st.one_of(integers(), text()),
        "vcpus": st.one_of(integers(), text()),
        "autostart": st.one_of(st.booleans(), text()),
        "macs": st.one_of(st.lists(st.sampled_from(MACS), max_size=2), st.sampled_from(MACS)),
        "uuid": st.sampled_from(UUIDS),
        "state": st.sampled_from(["present", "running", "absent", "bogus"]),
        "ip": st.sampled_from(IPS),
        "hostname": text(),
        "files": st.lists(guest_file(), max_size=2),
        "cloud_init": cloud_init(),
        "bogus_key": st.just(1),
    }
    return draw(st.fixed_dictionaries({"name": values.pop("name")}, optional=values))


def guest_file() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"path": st.one_of(st.sampled_from(["/etc/motd", "/etc/../x", "relative", "/", "//x"]), text())},
        optional={
            "content": st.one_of(text(), st.integers()),
            "mode": st.sampled_from(MODES),
            "owner": st.sampled_from(OWNERS),
        },
    )


def cloud_init() -> st.SearchStrategy:
    return st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "user_data": st.one_of(
                    st.sampled_from(["#cloud-config\n{}", "#!/bin/sh\ntrue", "no hash", ""]),
                    st.dictionaries(text(), jsonish(1), max_size=2),
                ),
                "meta_data": st.dictionaries(text(), jsonish(1), max_size=2),
                "network_config": st.one_of(text(), st.dictionaries(text(), jsonish(1), max_size=2)),
            },
        ),
        jsonish(1),
    )


def guestfs_disk() -> st.SearchStrategy:
    return st.one_of(
        paths(),
        st.fixed_dictionaries(
            {"path": paths()}, optional={"format": st.sampled_from(["raw", "qcow2", "vmdk", "", "a;b"])}
        ),
        jsonish(1),
    )


def mounts() -> st.SearchStrategy:
    return st.dictionaries(
        st.sampled_from(["/dev/sda1", "/dev/sda2", "sda1", "", "/dev/../etc"]),
        st.sampled_from(["/", "/boot", "boot", "", "/a/../b"]),
        max_size=2,
    )


def vm_disk() -> st.SearchStrategy:
    """One entry of kvm_vm's disks: its known keys with good and bad values (sometimes an unknown key)."""
    return st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "image": st.one_of(paths(), st.integers()),
                "mode": st.sampled_from(["overlay", "copy", "as_is", "bogus", ""]),
                "size": st.one_of(st.sampled_from(["1G", "64M", "0", "-1", "10X", "1P", "2P"]), integers(), text()),
                "format": st.sampled_from(["qcow2", "raw", "vmdk", ""]),
                "bus": st.sampled_from(["virtio", "sata", "ide", "floppy", ""]),
                "target": st.one_of(st.sampled_from(["vda", "sdb", "VDA", "vd a", "../x", ""]), text()),
                "path": paths(),
                "pool": st.one_of(st.sampled_from(["default", "nope", "a/b", ""]), text()),
                "bogus_key": st.just(1),
            },
        ),
        jsonish(1),
    )


def vm_network() -> st.SearchStrategy:
    return st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "network": st.one_of(st.sampled_from(["default", "nope", "a/b", ""]), text()),
                "bridge": st.sampled_from(["br0", "", "a/b"]),
                "mac": st.one_of(st.sampled_from([*MACS, "01:00:5e:00:00:01", "zz:zz"]), text()),
                "model": st.sampled_from(["virtio", "e1000e", "pcnet", ""]),
            },
        ),
        jsonish(1),
    )


def vm_boot() -> st.SearchStrategy:
    return st.one_of(
        st.fixed_dictionaries({}, optional={"kernel": paths(), "initrd": paths(), "cmdline": text()}), jsonish(1)
    )


@st.composite
def vm_item(draw):
    """One entry of kvm_vm's vms: a dict of a VM's options (name mostly given)."""
    optional = {
        "memory": st.one_of(integers(), st.sampled_from(["512", "x"])),
        "vcpus": st.one_of(integers(), st.sampled_from(["2", "x"])),
        "os_variant": st.sampled_from(["debian11", "linux2022", "win11", "debain11", "", "-x"]),
        "disks": st.lists(vm_disk(), max_size=2),
        "networks": st.lists(vm_network(), max_size=2),
        "boot": vm_boot(),
        "cloud_init": cloud_init(),
        "state": st.sampled_from(["present", "running", "absent", "bogus"]),
        "bogus_key": st.just(1),
    }
    name = draw(st.one_of(st.sampled_from(["fuzz-v1", "fuzz-v2"]), text()))
    return draw(st.fixed_dictionaries({"name": st.just(name)}, optional=optional))


def special(module: str, option: str) -> st.SearchStrategy | None:
    """Options whose structure the spec cannot say (raw, or dicts without options)."""
    if module == "kvm_vm":
        vm = {"disks": st.lists(vm_disk(), max_size=3), "networks": st.lists(vm_network(), max_size=2)}
        vm.update(boot=vm_boot(), cloud_init=cloud_init(), vms=st.lists(vm_item(), max_size=3))
        if option in vm:
            return vm[option]
    if module == "kvm_clone" and option == "clones":
        return st.lists(clone_item(), max_size=3)
    if module == "kvm_clone" and option == "cloud_init":
        return cloud_init()
    if option == "mounts":
        return st.one_of(mounts(), jsonish(1))
    if option == "files" and module == "kvm_clone":
        return st.lists(guest_file(), max_size=2)
    if module == "kvm_guestfs" and option == "disks":
        return st.lists(guestfs_disk(), max_size=3)
    return None


# --- from the spec


def _scalar(module: str, name: str, opt: dict) -> st.SearchStrategy:
    kind = opt.get("type", "str")
    named = by_name(module, name)
    if named is not None:
        return named
    if kind == "int":
        return integers()
    if kind == "float":
        return st.one_of(st.floats(), integers())
    if kind == "bool":
        return st.booleans()
    if kind == "path":
        return paths()
    if kind == "raw":
        return jsonish()
    if kind == "dict":
        return st.dictionaries(text(), jsonish(1), max_size=3)
    return text()


def _wrong_type(kind: str) -> st.SearchStrategy:
    """A value of another type, for AnsibleModule's own type checks (and its conversions: '12' for an int)."""
    return st.sampled_from(
        {
            "int": ["12", "abc", "1.5", "", 1.5, True, [], {}],
            "bool": ["yes", "no", "maybe", "", 2, [], {}],
            "list": ["a,b", "", 5, {}],
            "dict": ["a=1 b=2", "not a dict", 5, []],
        }.get(kind, [5, 1.5, True, [], {}, ["a"]])
    )


def option(module: str, name: str, opt: dict, typed: bool = False) -> st.SearchStrategy:
    """The values of one option; ``typed``: always of the option's type and within its choices."""
    kind = opt.get("type", "str")
    if name in ("uri", "dest_uri"):  # only ever test:/// (or empty, which falls back to LIBVIRT_DEFAULT_URI)
        return st.one_of(URIS, st.none())
    strategy = special(module, name)
    if strategy is None:
        if kind == "list":
            elements = opt.get("elements", "str")
            if "choices" in opt:
                item = st.sampled_from(opt["choices"])
                if not typed:
                    item = weighted((4, item), (1, text()))
            elif elements == "dict" and "options" in opt:
                item = suboptions(module, opt["options"], typed)
            else:
                item = _scalar(module, name, {"type": elements})
            strategy = st.lists(item, max_size=4)
        elif kind == "dict" and "options" in opt:
            strategy = suboptions(module, opt["options"], typed)
        elif "choices" in opt:
            strategy = st.sampled_from(opt["choices"])
            if not typed:
                strategy = weighted((4, strategy), (1, text()))
        elif name in NAMES and kind == "str":
            existing = st.sampled_from([*EXISTING, "fuzz-new", "fuzz-new"])
            strategy = weighted((1, existing), (1, _scalar(module, name, opt)))
        else:
            strategy = _scalar(module, name, opt)
    if typed:
        return strategy
    # Now and then a value of the wrong type or null, which AnsibleModule must refuse or convert.
    return weighted((12, strategy), (1, _wrong_type(kind)), (1, st.none()))


# Options that name something libvirt has: half the time one that test:///default has.
NAMES = ("name", "domain", "template", "pool", "network", "clone_from", "backing_volume", "template_snapshot")


def suboptions(module: str, spec: dict, typed: bool = False) -> st.SearchStrategy:
    required = {k: option(module, k, v, typed) for k, v in spec.items() if v.get("required")}
    optional = {k: option(module, k, v, typed) for k, v in spec.items() if not v.get("required")}
    plain = st.fixed_dictionaries(required, optional=optional)
    if typed:
        return plain
    # Sometimes a required key is missing or an unknown one is added.
    return weighted(
        (8, plain),
        (1, st.fixed_dictionaries({}, optional={**required, **optional})),
        (1, plain.map(lambda d: {**d, "bogus_key": 1})),
    )


@st.composite
def _well_formed(draw, module: str, spec: dict, rules: dict) -> dict:
    """Arguments AnsibleModule accepts (types, choices, mutually_exclusive, required_*): the manager runs."""
    args = dict(draw(suboptions(module, spec, typed=True)))
    for group in rules.get("mutually_exclusive", []):
        present = [k for k in group if args.get(k) is not None]
        for k in present[1:]:
            del args[k]
    for group in rules.get("required_one_of", []):
        if not any(args.get(k) is not None for k in group):
            k = draw(st.sampled_from(list(group)))
            args[k] = draw(option(module, k, spec[k], typed=True))
    for key, value, needed, *any_of in rules.get("required_if", []):
        if args.get(key, spec[key].get("default")) == value and key in spec:
            missing = [k for k in needed if args.get(k) is None]
            if missing and (not any_of or not any_of[0] or len(missing) == len(needed)):
                for k in missing[:1] if any_of and any_of[0] else missing:
                    args[k] = draw(option(module, k, spec[k], typed=True))
    for key, needed in rules.get("required_by", {}).items():
        if args.get(key) is not None:
            for k in [needed] if isinstance(needed, str) else needed:
                args.setdefault(k, draw(option(module, k, spec[k], typed=True)))
    for group in rules.get("mutually_exclusive", []):  # a requirement may have brought one back
        present = [k for k in group if args.get(k) is not None]
        for k in present[1:]:
            del args[k]
    return {k: v for k, v in args.items() if v is not None}


def for_spec(module: str, kwargs: dict) -> st.SearchStrategy:
    """The module arguments: mostly well-formed ones (so the manager runs), sometimes anything."""
    spec = kwargs["argument_spec"]
    well = _well_formed(module, spec, kwargs)
    return weighted((4, well), (1, suboptions(module, spec)))
