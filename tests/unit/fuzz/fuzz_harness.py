"""Run one module in-process as Ansible would, on one generated input, and judge what a user would meet.

The module's own ``main()`` runs with ``ansible.module_utils.basic`` patched the way ansible-core's unit
tests do (``patch_module_args``): its real AnsibleModule validates the arguments and ``run_module`` runs
the manager; only the printing of the result is replaced (``_record_module_result``, ansible-core's hook
for in-process execution), after the result went through the module encoder exactly as it would.

The property, for every input:

- the run ends in ``exit_json`` or ``fail_json`` (any other exception out of ``main()`` is a traceback);
- a failure's ``msg`` is no traceback ("Traceback", "Module failed") and no raw libvirt message (one of
  libvirt's error prefixes, or ``run_module``'s generic wrapping of a libvirtError no manager named);
- a failed run, and any run in check mode, changes nothing: test:///default's domains, networks, pools,
  volumes and snapshots, and the sandbox's files, are the same before and after;
- a successful run that reports ``changed: false`` changed nothing either;
- nothing is written outside the example's sandbox (see fuzz_sandbox).
"""

from __future__ import annotations

import gc
import glob
import importlib
import json
import os
import sys
import time
import types
import zlib
from pathlib import Path

import fuzz_sandbox as sandbox
import pytest

ROOT = Path(__file__).resolve().parents[3]
COLLECTION = "ansible_collections.virtops.kvm.plugins"
URI = "test:///default"

# Targets whose fuzzing still finds failures in the product, left out of the default run until fixed
# (VIRTOPS_FUZZ_KNOWN_BAD=1 runs them too). Empty it as the fixes land: an entry is a failing test
# waiting, never a pass. target -> what fails (see the fuzz report in the issue).
KNOWN_BAD: dict[str, str] = {}

# Inputs fuzzing found to break the property, replayed as explicit examples on every run (besides the
# example database, which keeps Hypothesis' own finds): target -> [module arguments].
REGRESSIONS: dict[str, list[dict]] = {
    "kvm_guestfs": [
        # were TypeError/ValueError in _guestfs/drives.py resolve_drives() (fixed in 6748198)
        {"domain": ""},
        {"disks": [0.0]},
        {"disks": [None]},
        {"disks": [["a", "b"]]},
    ],
    "kvm_clone": [
        {"name": "c1", "template": "test", "identity": 5},  # TypeError in ansible-core's sub-spec validation
    ],
}

# How many inputs each target gets (VIRTOPS_FUZZ_EXAMPLES overrides: a longer run, docs/development.md).
DEFAULT_EXAMPLES = 200

# Messages that are libvirt's own words, not the collection's (virerror.c's prefixes, plus what the
# test driver says without one). A message starting with one reached the user untranslated.
RAW_PREFIXES = (
    "libvirt:",
    "libvirtError",
    "internal error",
    "XML error",
    "unsupported configuration",
    "Requested operation is not valid",
    "operation failed",
    "operation forbidden",
    "invalid argument",
    "argument unsupported",
    "Operation not supported",
    "this function is not supported by the connection driver",
    "Domain not found",
    "Network not found",
    "Storage pool not found",
    "Storage volume not found",
    "Domain snapshot not found",
    "Node device not found",
    "XML document failed to validate against schema",
    "Timed out during operation",
    "Guest agent is not responding",
    "authentication failed",
    "Failed to connect socket",
    "no connection driver available",
    "invalid connection pointer",
    "invalid domain pointer",
    "invalid network pointer",
    "invalid storage pool pointer",
    "invalid storage volume pointer",
    "resource busy",
    "unexpected",
    "cannot parse",
    "expected unsigned integer",
)
TRACEBACK_MARKERS = ("Traceback", "Module failed")

# Per target: inputs run, inputs that broke the property, the slowest input (s).
COUNTS: dict[str, dict] = {}


def examples() -> int:
    return int(os.environ.get("VIRTOPS_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)


def count(target: str, failed: bool = False, seconds: float = 0.0, outcome: str | None = None) -> None:
    """One input run; ``outcome``: ok, invalid (AnsibleModule refused the arguments) or the error's type."""
    c = COUNTS.setdefault(
        target, {"inputs": 0, "failed": 0, "slowest": 0.0, "seconds": 0.0, "status": "ran", "outcomes": {}}
    )
    c["inputs"] += 1
    c["seconds"] += seconds
    c["failed"] += bool(failed)
    c["slowest"] = max(c["slowest"], seconds)
    if outcome:
        c["outcomes"][outcome] = c["outcomes"].get(outcome, 0) + 1


# --- the property's failures, one exception type per kind (Hypothesis keeps distinct kinds apart)


class FuzzFailure(AssertionError):
    """A run that broke the property without raising."""


_KINDS: dict = {}


def failure(kind: str, detail: str) -> FuzzFailure:
    """A FuzzFailure of a type named after ``kind`` (one type per kind, so each is shrunk on its own)."""
    key = "".join(ch if ch.isalnum() else "_" for ch in kind)[:60]
    if key not in _KINDS:
        _KINDS[key] = type(key, (FuzzFailure,), {})
    return _KINDS[key](f"{kind}: {detail}")


# --- collect mode: every distinct failure with the smallest input seen, instead of stopping at the first

FOUND: dict = {}


def signature(exc: BaseException) -> str:
    """One failure: its kind (a broken property) or its type and the product line it came from."""
    if isinstance(exc, FuzzFailure):
        return type(exc).__name__
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename
        if "ansible_collections/virtops" in f or "ansible/module_utils" in f:
            where = f"{f.split('site-packages/')[-1].split('.collections/')[-1]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{type(exc).__name__} at {where}"


def collect(target: str, exc: BaseException, example: dict) -> None:
    """Keep the smallest input per (target, signature); written to VIRTOPS_FUZZ_COLLECT (JSON) as it goes."""
    key = f"{target} | {signature(exc)}"
    text = repr(example)
    old = FOUND.get(key)
    if old is None or len(text) < len(old["example"]):
        FOUND[key] = {"example": text, "message": f"{type(exc).__name__}: {str(exc)[:1500]}", "count": 0}
    FOUND[key]["count"] += 1
    with open(os.environ["VIRTOPS_FUZZ_COLLECT"], "w", encoding="utf-8") as f:
        json.dump(FOUND, f, indent=1, sort_keys=True)


# --- the modules


def module_names() -> list[str]:
    return sorted(Path(p).stem for p in glob.glob(str(ROOT / "plugins/modules/kvm_*.py")))


def load(name: str) -> types.ModuleType:
    return importlib.import_module(f"{COLLECTION}.modules.{name}")


class _Captured(BaseException):
    def __init__(self, kwargs):
        super().__init__()
        self.kwargs = kwargs


def argument_spec(name: str) -> dict:
    """The AnsibleModule arguments ``main()`` builds (its spec, mutually_exclusive, ...), read by running it."""
    from ansible.module_utils import basic

    def capture(self, **kwargs):
        raise _Captured(kwargs)

    saved = basic.AnsibleModule.__init__
    basic.AnsibleModule.__init__ = capture
    try:
        load(name).main()
    except _Captured as got:
        return got.kwargs
    finally:
        basic.AnsibleModule.__init__ = saved
    raise AssertionError(f"{name}.main() built no AnsibleModule")


def product_modules() -> list[types.ModuleType]:
    return [m for n, m in list(sys.modules.items()) if n.startswith(COLLECTION + ".module_utils") and m is not None]


# --- libvirt's test:///default state


def driver_state(conn) -> dict:
    """Everything a module could change in the test driver, as comparable text."""
    import libvirt

    def attempt(fn, *args):
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            return f"<error {exc.get_error_code()}>"

    state: dict = {"domains": {}, "networks": {}, "pools": {}}
    for d in conn.listAllDomains():
        snaps = {s.getName(): attempt(s.getXMLDesc, 0) for s in attempt(d.listAllSnapshots) or []}
        current = attempt(lambda d=d: d.snapshotCurrent().getName())
        state["domains"][d.name()] = dict(
            xml=attempt(d.XMLDesc, 0),
            inactive=attempt(d.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE),
            state=attempt(d.state),
            persistent=attempt(d.isPersistent),
            autostart=attempt(d.autostart),
            snapshots=snaps,
            current=current,
        )
    for n in conn.listAllNetworks():
        state["networks"][n.name()] = dict(
            xml=attempt(n.XMLDesc, 0),
            inactive=attempt(n.XMLDesc, libvirt.VIR_NETWORK_XML_INACTIVE),
            active=attempt(n.isActive),
            autostart=attempt(n.autostart),
            persistent=attempt(n.isPersistent),
        )
    for p in conn.listAllStoragePools():
        vols = attempt(p.listAllVolumes)
        state["pools"][p.name()] = dict(
            xml=attempt(p.XMLDesc, 0),
            active=attempt(p.isActive),
            autostart=attempt(p.autostart),
            volumes={v.name(): attempt(v.XMLDesc, 0) for v in vols} if isinstance(vols, list) else vols,
        )
    return state


def diff_keys(before: dict, after: dict, where: str = "") -> list[str]:
    """Where two states differ, as short paths (domains/test/state, pools/default-pool/volumes/x)."""
    out = []
    for k in sorted(set(before) | set(after), key=str):
        path = f"{where}/{k}" if where else str(k)
        if k not in before:
            out.append(f"+{path}")
        elif k not in after:
            out.append(f"-{path}")
        elif isinstance(before[k], dict) and isinstance(after[k], dict):
            out += diff_keys(before[k], after[k], path)
        elif before[k] != after[k]:
            out.append(f"~{path}")
    return out


_PRISTINE: list = []  # test:///default as a fresh process finds it (taken once, before any run)


class Driver:
    """One test:///default connection held open around each run; closed and reopened between runs so every
    input starts from the driver's pristine state (the driver forgets everything when no connection is open),
    which also keeps the runs reproducible for shrinking."""

    def __init__(self):
        import libvirt

        self.libvirt = libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        gc.collect()
        self.conn = libvirt.open(URI)
        if not _PRISTINE:
            _PRISTINE.append(driver_state(self.conn))
        self.pristine = _PRISTINE[0]
        self.leaks: list[str] = []
        self.reset()

    def reset(self) -> dict:
        self.conn.close()
        self.conn = self.libvirt.open(URI)
        state = driver_state(self.conn)
        if state != self.pristine:  # a virConnect not closed yet keeps the driver: collect it, then look again
            self.conn.close()
            gc.collect()
            self.conn = self.libvirt.open(URI)
            state = driver_state(self.conn)
        if state != self.pristine:
            self.leaks.append(", ".join(diff_keys(self.pristine, state)[:5]))
        return state

    def state(self) -> dict:
        return driver_state(self.conn)

    def close(self) -> None:
        self.conn.close()


# --- a richer world than test:///default's: what an input may find defined before its run

SB = sandbox.SB
SETUPS = {
    "domain fuzz-a (sandbox disk)": lambda c: c.defineXML(
        "<domain type='test'><name>fuzz-a</name><memory unit='KiB'>65536</memory><vcpu>1</vcpu>"
        "<os><type arch='i686'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{SB}/images/base.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    ),
    "domain fuzz-a running": lambda c: c.lookupByName("fuzz-a").create(),
    "snapshot snap1 of test": lambda c: c.lookupByName("test").snapshotCreateXML(
        "<domainsnapshot><name>snap1</name><description>fuzz</description></domainsnapshot>", 0
    ),
    "volume vol1 in default-pool": lambda c: c.storagePoolLookupByName("default-pool").createXML(
        "<volume><name>vol1</name><capacity>1048576</capacity><target><format type='qcow2'/></target></volume>", 0
    ),
    "network fuzznet": lambda c: c.networkDefineXML(
        "<network><name>fuzznet</name><bridge name='virbr9'/><ip address='10.9.0.1' netmask='255.255.255.0'>"
        "<dhcp><range start='10.9.0.2' end='10.9.0.9'/>"
        "<host mac='52:54:00:12:34:56' name='web' ip='10.9.0.5'/></dhcp></ip></network>"
    ),
    "pool fuzzpool (sandbox dir)": lambda c: c.storagePoolDefineXML(
        f"<pool type='dir'><name>fuzzpool</name><target><path>{SB}/dir</path></target></pool>"
    ),
    "domain test shut off": lambda c: c.lookupByName("test").destroy(),
    "domain test paused": lambda c: c.lookupByName("test").suspend(),
}


def apply_setups(conn, names: list, sb: str) -> None:
    """Bring the driver to the chosen starting state (a step that cannot apply, e.g. after another, is skipped)."""
    import libvirt

    for name in names:
        fn = SETUPS[name]
        try:
            fn(_SandboxConn(conn, sb))
        except libvirt.libvirtError:
            pass


class _SandboxConn:
    """The connection with @SB@ in every XML it is given replaced by the sandbox's path."""

    def __init__(self, conn, sb: str):
        self._conn, self._sb = conn, sb

    def __getattr__(self, name):
        fn = getattr(self._conn, name)
        if name.endswith("XML"):
            return lambda xml, *a: fn(xml.replace(SB, self._sb), *a)
        return fn


# --- one run


class Runner:
    """Runs one module's main() on generated arguments inside the walls; ``judge`` raises on a broken property."""

    def __init__(self, module_name: str, base: str, monkeypatch):
        from ansible.module_utils import basic

        self.name = module_name
        self.main = load(module_name).main
        self.base = base
        self.sb = os.path.join(base, "sb")
        self.clock = sandbox.FakeClock()
        self.guard = sandbox.WriteGuard()
        self.driver = Driver()
        self.result: dict | None = None
        sandbox.build(base)
        self.pristine_tree = sandbox.tree(self.sb, everything=True)
        self._patch(monkeypatch, basic)

    # the walls, for the whole test (the guard only around main())
    def _patch(self, mp, basic) -> None:
        sb = self.sb
        mp.setenv("LIBVIRT_DEFAULT_URI", URI)
        mp.setenv("TMPDIR", f"{sb}/h-tmp")
        mp.setenv("HOME", f"{sb}/h-tmp")
        mp.delenv("VIRTOPS_KVM_KEEPALIVE", raising=False)
        mp.delenv("VIRTOPS_KVM_OPEN_TIMEOUT", raising=False)
        mp.chdir(sb)
        import tempfile

        mp.setattr(tempfile, "tempdir", f"{sb}/h-tmp")
        runner = self

        def run_command(self, args, *a, **kw):
            return (1, "", f"stubbed in fuzz: {args!r} not run")

        def get_bin_path(self, arg, required=False, opt_dirs=None):
            if required:
                self.fail_json(msg=f"Failed to find required executable {arg!r} (stubbed in fuzz)")
            return f"/nonexistent/fuzz-bin/{arg}"

        def record(self, o):
            encoder = None
            try:
                from ansible.module_utils.common import json as common_json

                encoder = common_json.get_module_encoder(
                    basic._ANSIBLE_PROFILE, common_json.Direction.MODULE_TO_CONTROLLER
                )
            except (ImportError, AttributeError):
                pass
            json.dumps(o, cls=encoder)  # what the real module prints: an unserializable result is a traceback
            runner.result = o

        mp.setattr(basic.AnsibleModule, "run_command", run_command)
        mp.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
        mp.setattr(basic.AnsibleModule, "_log_invocation", lambda self: None)
        mp.setattr(basic.AnsibleModule, "log", lambda self, msg, log_args=None: None)
        if hasattr(basic.AnsibleModule, "_record_module_result"):
            mp.setattr(basic.AnsibleModule, "_record_module_result", record)
        else:  # older ansible-core: catch what exit_json/fail_json print
            mp.setattr(basic.AnsibleModule, "_return_formatted", record)

        from ansible_collections.virtops.kvm.plugins.module_utils import _deps
        from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock

        stub = types.SimpleNamespace(GuestFS=sandbox.stub_guestfs_handle)
        mp.setitem(_deps._LAZY, "guestfs", (stub, None))
        seams = {
            "lock_path": f"{sb}/h-lock/clone.lock",
            "lock_timeout": 1,
            "journal_dir": f"{sb}/h-intents",
            "default_dir": f"{sb}/h-images",  # kvm_vm's files when no pool "default" is defined
            "handle_factory": sandbox.stub_guestfs_handle,
            "root": f"{sb}/h-root",
            "sleep": self.clock.sleep,
            "clock": Clock(self.clock.clock, self.clock.sleep),  # the managers' one time seam (_wait.Clock)
        }
        for mod in sandbox_modules():
            for value in vars(mod).values():
                if isinstance(value, type) and "SEAMS" in vars(value) and value.__module__ == mod.__name__:
                    mp.setattr(value, "SEAMS", {k: seams.get(k, v) for k, v in value.SEAMS.items()})
        self.replaced_defaults = sandbox.patch_clock_defaults(mp, sandbox_modules(), self.clock, f"{sb}/h-run")

    def close(self) -> None:
        self.driver.close()

    def run(self, args: dict, check_mode: bool, diff: bool, setups: list = ()) -> None:
        """One input: fresh sandbox and driver (plus ``setups``), main(), then the property (raises when broken)."""
        started = time.monotonic()
        broken = True
        try:
            self._run(args, check_mode, diff, setups)
            broken = False
        except Exception as exc:
            if not os.environ.get("VIRTOPS_FUZZ_COLLECT"):
                raise
            collect(self.name, exc, dict(args=args, check_mode=check_mode, diff=diff, setups=list(setups)))
        finally:
            count(self.name, broken, time.monotonic() - started, self.outcome())

    def outcome(self) -> str | None:
        if self.result is None:
            return "traceback"
        if not self.result.get("failed"):
            return "changed" if self.result.get("changed") else "ok"
        return self.result.get("error") or "invalid"

    def _run(self, args: dict, check_mode: bool, diff: bool, setups) -> None:
        from ansible.module_utils.testing import patch_module_args

        sb = self.sb
        if sandbox.tree(sb, everything=True) != self.pristine_tree:
            sandbox.build(self.base)
        self.clock.reset()
        self.driver.reset()
        apply_setups(self.driver.conn, list(setups), sb)
        before = self.driver.state()
        files_before = sandbox.tree(sb)
        real = sandbox.substitute(args, sb)
        real.update(
            _ansible_check_mode=check_mode,
            _ansible_diff=diff,
            _ansible_remote_tmp=f"{sb}/h-remote-tmp",
            _ansible_tmpdir=f"{sb}/h-remote-tmp",
            _ansible_keep_remote_files=False,
        )
        self.result = None
        exit_code = None
        with patch_module_args(real):
            self.guard.install(sb)
            try:
                self.main()
            except SystemExit as exc:
                exit_code = exc.code
            finally:
                self.guard.uninstall()
        self.judge(exit_code, check_mode, before, files_before, sb)

    def judge(self, exit_code, check_mode: bool, before: dict, files_before: dict, sb: str) -> None:
        result = self.result
        if self.guard.violations:
            raise failure("WroteOutsideSandbox", "; ".join(self.guard.violations))
        if exit_code is None:
            raise failure("ReturnedWithoutExit", "main() returned without exit_json or fail_json")
        if result is None:
            raise failure("ExitWithoutResult", f"main() exited ({exit_code}) without a result")
        failed = bool(result.get("failed"))
        if failed:
            msg = result.get("msg")
            if not isinstance(msg, str) or not msg.strip():
                raise failure("FailedWithoutMessage", repr(result)[:500])
            for marker in TRACEBACK_MARKERS:
                if marker in msg:
                    raise failure(f"TracebackInMessage_{marker}", msg[:2000])
            for prefix in RAW_PREFIXES:
                if msg.startswith(prefix):
                    raise failure(f"RawLibvirtMessage_{prefix}", msg[:2000])
            if msg.startswith("A libvirt call failed:"):
                raise failure(f"UntranslatedLibvirtError_{_words(msg, 4, 6)}", msg[:2000])
        after = self.driver.state()
        files_after = sandbox.tree(sb)
        why = "failed run" if failed else ("check mode" if check_mode else None)
        if why is None and not result.get("changed"):
            why = "run that reported changed=false"
        if why is not None:
            changed = diff_keys(before, after)
            if changed:
                raise failure(f"StateChanged in {why}", f"{changed}; msg={str(result.get('msg'))[:500]!r}")
            changed_files = diff_keys(files_before, files_after)
            if changed_files:
                raise failure(f"FilesChanged in {why}", f"{changed_files}; msg={str(result.get('msg'))[:500]!r}")


def _words(text: str, start: int, end: int) -> str:
    return "_".join(text.split()[start:end])


def sandbox_modules() -> list[types.ModuleType]:
    """The product's module_utils (imported by loading every module)."""
    for name in module_names():
        load(name)
    return product_modules()


# --------------------------------------------------------------------------- what every fuzz test file uses

DB = Path(__file__).resolve().parent / ".hypothesis-db"


def fuzz_settings(target: str):
    """Bounded and reproducible: a fixed seed per target, N inputs, the committed example database first."""
    from hypothesis import HealthCheck, settings  # the main venv only (conftest.py)
    from hypothesis.database import DirectoryBasedExampleDatabase

    return settings(
        max_examples=examples(),
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(DB / target)),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def target_seed(target: str) -> int:
    """A fixed Hypothesis seed per target."""
    return zlib.crc32(target.encode())


def skip_known_bad(target: str) -> None:
    """Skip a target listed in KNOWN_BAD (its count says why), unless VIRTOPS_FUZZ_KNOWN_BAD is set."""
    reason = KNOWN_BAD.get(target)
    if reason and not os.environ.get("VIRTOPS_FUZZ_KNOWN_BAD"):
        COUNTS[target] = {
            "inputs": 0,
            "failed": 0,
            "slowest": 0.0,
            "seconds": 0.0,
            "outcomes": {},
            "status": f"KNOWN_BAD: {reason}",
        }
        pytest.skip(f"KNOWN_BAD (fuzz_harness.py): {reason}; VIRTOPS_FUZZ_KNOWN_BAD=1 runs it")
