# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A batch of domains in one kvm_domain run: every item planned from one host scan, then acted on concurrently.

Three passes, so a fleet costs about one domain's time and a bad item changes nothing:

1. every item is checked without libvirt (its keys, state, name or XML, and
   no name twice): a bad item refuses the whole batch before the host is read;
2. every item is planned in check mode from the run's one ``HostScan``
   (``DomainRun`` with ``from_scan``): what would change, and every refusal
   (an unknown name without XML, a clone base to start, storage in use).
   Any refusal refuses the batch, still before anything was touched;
3. outside check mode, the items that change run for real, up to
   ``parallel`` at once over the one connection: the slow transitions
   (graceful shutdown, reboot, start) overlap, and an item that fails (a
   guest deaf to ACPI) fails alone, with its hint, while the others finish.
   The boots to wait for (``boot_marker``) are waited for together, in one
   loop once every start is done, so ``parallel`` bounds the starts, not
   the boots. The run then fails naming the failed items, with every
   item's result attached.

An item is a dict of ``ITEM_KEYS``; what it leaves out comes from the
module's top-level options of the same name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._domain.boot import BootWatch, check_options, wait_all
from ansible_collections.virtops.kvm.plugins.module_utils._domain.config import validate
from ansible_collections.virtops.kvm.plugins.module_utils._domain.converge import STATES
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import domain_info
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import register_events
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError

# What an item of ``domains`` may say; all but name and xml default to the top-level option.
ITEM_OPTIONS = dict(
    name=dict(type="str"),
    xml=dict(type="str"),
    state=dict(type="str", choices=STATES),
    memory=dict(type="int"),
    vcpus=dict(type="int"),
    autostart=dict(type="bool"),
    title=dict(type="str"),
    description=dict(type="str"),
    shutdown_timeout=dict(type="int"),
    force=dict(type="bool"),
)
ITEM_KEYS = tuple(ITEM_OPTIONS)
_BOOLS = ("autostart", "force")
_STRINGS = ("name", "xml", "title", "description")


def item_params(p: dict, index: int, item) -> dict:
    """The full options of item ``index``: the item's own keys over the top-level options."""
    if not isinstance(item, dict):
        raise InvalidInput(f"must be a dict (name, state, ...), not {type(item).__name__}.")
    unknown = sorted(k for k in item if k not in ITEM_KEYS)
    if unknown:
        raise InvalidInput(f"has unknown key(s) {', '.join(unknown)}.", hint=f"Allowed: {', '.join(ITEM_KEYS)}.")
    out = {k: v for k, v in p.items() if k not in ("domains", "parallel")}
    for key in ITEM_KEYS:
        if key in ("name", "xml"):
            out[key] = item.get(key)
        elif item.get(key) is not None:
            out[key] = item[key]
    if out["state"] not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}, not {out['state']!r}.")
    for key in _BOOLS:
        if out[key] is not None and not isinstance(out[key], bool):
            raise InvalidInput(f"{key} must be true or false, not {out[key]!r}.")
    for key in _STRINGS:
        if out[key] is not None and not isinstance(out[key], str):
            raise InvalidInput(f"{key} must be a string, not {out[key]!r}.")
    if out["shutdown_timeout"] is not None and not isinstance(out["shutdown_timeout"], int):
        raise InvalidInput(f"shutdown_timeout must be a whole number of seconds, not {out['shutdown_timeout']!r}.")
    if out["name"] is None and out["xml"] is None:
        raise InvalidInput("needs a name (or an xml with a <name>).")
    return out


def plan_items(p: dict) -> list[dict]:
    """Every item as {label, p, name, root}; one InvalidInput naming every bad item, before the host is read."""
    items, problems, seen = [], [], {}
    for index, raw in enumerate(p["domains"]):
        label = f"domains[{index}]"
        try:
            params = item_params(p, index, raw)
            name, root = validate(params)
        except InvalidInput as exc:
            problems.append(f"{label}: {exc.message}")
            continue
        label = f"{label} ({name})"
        if name in seen:
            problems.append(f"{label}: domain {name} is listed twice (also as {seen[name]}); list each domain once.")
            continue
        seen[name] = label
        items.append(dict(label=label, p=params, name=name, root=root))
    if problems:
        raise InvalidInput(
            f"{len(problems)} of {len(p['domains'])} item(s) of domains cannot be used; nothing was changed: "
            + " | ".join(problems)
        )
    return items


def _typed(exc: BaseException) -> KvmError:
    """A typed error for what a libvirt call or the file system raised in one item."""
    if isinstance(exc, KvmError):
        return exc
    if isinstance(exc, OSError):
        return KvmError(f"{exc.strerror or exc} ({exc.filename or ''}).")
    return libvirt_failed(exc, "A libvirt call")


def _errors() -> tuple:
    return (KvmError, OSError, _deps.libvirt.libvirtError)


def _one_error(failures: list[tuple[dict, KvmError]], message: str, **details) -> KvmError:
    """The batch's failure: of the items' own type when they all share one, else KvmError."""
    kinds = {type(exc) for _item, exc in failures}
    cls = kinds.pop() if len(kinds) == 1 else KvmError
    why = " | ".join(f"{item['label']}: {exc.message}" for item, exc in failures)
    return cls(f"{message}: {why}", **details)


class Batch:
    """The ``domains`` of one kvm_domain run (see the module doc); ``run()`` returns the module result."""

    def __init__(self, manager):
        self.m = manager
        self.p = manager.p

    def _warn(self, name: str):
        return lambda message: self.m.warn(f"{name}: {message}")

    def _plan(self, items: list[dict]) -> list[dict]:
        """Check mode over every item from one scan; refuses the batch on any refusal."""
        scan = self.m.scan()
        plans, refused = [], []
        for item in items:
            run = self.m.domain_run(item["p"], item["name"], item["root"], True, self._warn(item["name"]), scan)
            try:
                plans.append(run.run())
            except _errors() as exc:
                refused.append((item, _typed(exc)))
        if refused:
            raise _one_error(
                refused, f"{len(refused)} of {len(items)} item(s) of domains were refused; nothing was changed"
            )
        return plans

    def _act(self, item: dict) -> tuple[dict | None, KvmError | None, list[str], BootWatch | None]:
        """One item for real: (result, None, changes, its boot to wait for) or (None, error, changes made, None)."""
        scan = self.m.scan()  # read before acting: what the plan saw moments ago
        run = self.m.domain_run(item["p"], item["name"], item["root"], False, self._warn(item["name"]), scan, True)
        try:
            return run.run(), None, run.ctx.changes, run.boot_watch
        except _errors() as exc:
            return None, _typed(exc), run.ctx.changes, None

    def _current(self, name: str) -> dict | None:
        """The domain as it is now (for a failed item), or None when it cannot be read."""
        lv = _deps.libvirt
        try:
            return domain_info(self.m.conn.lookupByName(name), self.m.uri)
        except (lv.libvirtError, KvmError):
            return None

    def run(self) -> dict:
        if self.p["parallel"] is None or self.p["parallel"] < 1:
            raise InvalidInput(f"parallel must be at least 1, not {self.p['parallel']!r}.")
        check_options(self.p)
        items = plan_items(self.p)
        if any(i["p"]["state"] == "rebooted" for i in items):
            register_events()  # before the connection opens
        results = self._plan(items) if items else []
        failures: dict[int, KvmError] = {}
        todo = [k for k, r in enumerate(results) if r["changed"]]
        if todo and not self.m.check_mode:
            watches = {}
            with ThreadPoolExecutor(max_workers=min(self.p["parallel"], len(todo))) as pool:
                done = {k: pool.submit(self._act, items[k]) for k in todo}
                for k, future in done.items():
                    result, error, changes, watch = future.result()
                    if error is not None:
                        failures[k] = error
                        results[k] = dict(
                            changed=bool(changes),
                            changes=list(changes),
                            pending_restart=False,
                            removed_files=[],
                            domain=self._current(items[k]["name"]),
                        )
                        continue
                    results[k] = result
                    if watch is not None:
                        watches[k] = watch
            # every start is done: the boots are waited for together, in one loop
            failures.update(wait_all(watches, self.m.clock))
            for k, error in failures.items():
                results[k].update(failed=True, msg=error.message, error=type(error).__name__)
        out = _result(items, results)
        if failures:
            failed = [(items[k], failures[k]) for k in sorted(failures)]
            names = ", ".join(item["name"] for item, _exc in failed)
            out.pop("diff")
            raise _one_error(
                failed,
                f"{len(failed)} of {len(items)} domain(s) failed ({names}); the others were brought to their state",
                failed_domains=[item["name"] for item, _exc in failed],
                **out,
            )
        return out


def _result(items: list[dict], results: list[dict]) -> dict:
    """The module result: one entry per item, in order, and what they add up to."""
    entries, diffs = [], []
    for item, r in zip(items, results):
        diff = r.pop("diff", None)
        if r["changed"] and diff is not None:
            diffs.append(diff)
        entries.append(dict(name=item["name"], **r))
    return dict(
        changed=any(e["changed"] for e in entries),
        domains=entries,
        changes=[f"{e['name']}: {c}" for e in entries for c in e["changes"]],
        pending_restart=any(e["pending_restart"] for e in entries),
        removed_files=[f for e in entries for f in e["removed_files"]],
        diff=diffs,
    )


def run_batch(manager) -> dict:
    return Batch(manager).run()
