# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Every URI read at once: one thread and one connection per URI, all bounded by one timeout.

A URI that cannot be read (refused, unknown driver, no answer in time) gives a
result with its ``error`` and no domains; the others are unaffected. A thread
still waiting when the time is up is left behind as a daemon thread (a libvirt
call cannot be interrupted), so it never holds up the caller or its exit.
"""

from __future__ import annotations

import threading

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import read
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline


def _quiet() -> None:
    # libvirt's default handler prints every error to stderr; here they are results.
    _deps.libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def gather(parsed: list[dict], sources: list[str], timeout: float, clock: Clock = SYSTEM) -> list[dict]:
    """``[{uri, hypervisor, ok, error, domains}]`` in the order of ``parsed`` (see ``uris.parse_all``).

    Errors other than the collection's own and libvirt's are raised again here, in the caller's thread.
    """
    _quiet()
    outcome: dict[int, tuple] = {}

    def work(index: int, p: dict) -> None:
        try:
            outcome[index] = ("ok", read.read_uri(p, sources))
        except KvmError as exc:
            outcome[index] = ("error", exc.message)
        except _deps.libvirt.libvirtError as exc:
            outcome[index] = ("error", f"Reading {p['uri']} failed: {exc.get_error_message() or exc}")
        except Exception as exc:  # not swallowed: handed to the caller's thread and raised there
            outcome[index] = ("raise", exc)

    threads = []
    for index, p in enumerate(parsed):
        t = threading.Thread(target=work, args=(index, p), name=f"virtops-inventory-{index}", daemon=True)
        t.start()
        threads.append(t)
    deadline = Deadline(timeout, clock)
    for t in threads:
        t.join(deadline.remaining())

    results = []
    for index, p in enumerate(parsed):
        kind, value = outcome.get(index, ("timeout", None))
        if kind == "raise":
            raise value
        base = dict(uri=p["uri"], hypervisor=p["hypervisor"])
        if kind == "ok":
            results.append(dict(base, ok=True, error=None, domains=value))
        elif kind == "timeout":
            error = f"No answer from {p['uri']} within {timeout:g} s (the timeout option)."
            results.append(dict(base, ok=False, error=error, domains=[]))
        else:
            results.append(dict(base, ok=False, error=value, domains=[]))
    return results
