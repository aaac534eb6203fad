# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The one place where the collection's exceptions become fail_json.

Modules call ``run(module, work)``: ``work`` returns the result dict, and any
KvmError it raises is reported with its message and details; nothing else is
caught, so a genuine bug still shows its traceback.
"""

from __future__ import annotations

from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError


def run(module, work: Callable[[], dict]) -> None:
    try:
        result = work()
    except KvmError as exc:
        module.fail_json(msg=exc.message, error=type(exc).__name__, **exc.details)
    module.exit_json(**result)
