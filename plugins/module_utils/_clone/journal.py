# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The intent journal: what a kvm_clone run is about to make or delete, written down before it does.

A run can die at any instant (SIGKILL, OOM, a lost SSH session, the libvirt
daemon killed under it). Before it creates a clone's files, and before it
destroys a clone for ``absent``, it writes an intent under the host lock:
``<dir>/<clone>.json`` with the URI, the clone's name and UUID, and every path
it will create or delete (fsync'ed, file and directory). It removes the intent
once the clone is defined (or fully rolled back, or its files deleted).

The next run that names the clone, under the same lock, finds the intent
left behind: that is the proof that the files it lists are this
collection's own leftovers, not someone else's files that happen to be in
the way.

* ``create``, no such domain now: the files listed that still exist are
  deleted (never one another domain uses), so the clone is made anew.
* ``create``, the domain exists with the intent's UUID: it was defined; only
  the intent is left to drop (a missing XML file is written as usual).
* ``remove``: the files listed that still exist and no domain uses are
  deleted (the domain was undefined before, or is removed again now).

A file that is not listed in an intent stays an error, never overwritten.
"""

from __future__ import annotations

import glob
import json
import os
import time

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

JOURNAL_DIR = "/var/lib/virtops-kvm/intents"


def temp_paths(path: str) -> list[str]:
    """The temporary files or directories a run makes next to ``path`` before renaming (seed builder)."""
    return sorted(
        glob.glob(os.path.join(glob.escape(os.path.dirname(path)), f".{glob.escape(os.path.basename(path))}.tmp-*"))
    )


class Journal:
    """The intents of one host (one directory), for the clones of one libvirt URI."""

    def __init__(self, directory: str | None, uri: str):
        self.dir = directory or JOURNAL_DIR
        self.uri = uri

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")

    def write(self, op: str, name: str, uuid: str | None, files: list[str]) -> None:
        """Record the intent durably before the first file is made or deleted."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            record = dict(op=op, uri=self.uri, name=name, uuid=uuid, files=files, pid=os.getpid(), time=time.time())
            tmp = self._path(name) + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(name))
            st.fsync(self.dir)
        except OSError as exc:
            raise StorageError(
                f"Cannot write kvm_clone's intent journal in {self.dir}: {exc.strerror}.",
                hint="The journal is what lets a rerun finish an interrupted one; fix the directory and rerun.",
            ) from exc

    def done(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def pending(self) -> list[dict]:
        """The intents an interrupted run of this URI left (unreadable ones are skipped, never acted on)."""
        out = []
        try:
            entries = sorted(os.listdir(self.dir))
        except OSError:
            return []
        for entry in entries:
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.dir, entry), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("uri") == self.uri and record.get("op") in ("create", "remove"):
                if entry == f"{record.get('name')}.json" and isinstance(record.get("files"), list):
                    out.append(record)
        return out

    def recover(self, scan: HostScan, check_mode: bool, names: set[str]) -> list[dict]:
        """Finish or remove what interrupted runs left for the clones ``names``; ``[{name, op, removed, kept}]``.

        Only the clones the task names: a task never touches, nor reports, the
        leftovers of another fleet (its own next run finishes them). In check
        mode ``removed`` is what would be removed.
        """
        report = []
        for intent in self.pending():
            if intent["name"] not in names:
                continue
            found = scan.get(intent["name"])
            if intent["op"] == "create" and found is not None and found.uuid == intent["uuid"]:
                if not check_mode:
                    self.done(intent["name"])  # the clone was defined: nothing left behind but this record
                continue
            if intent["op"] == "create" and found is not None:
                # a domain of that name that is not the clone this run began: its files are not touched
                report.append(dict(name=intent["name"], op=intent["op"], removed=[], kept=intent["files"]))
                if not check_mode:
                    self.done(intent["name"])
                continue
            if intent["op"] == "remove" and found is not None:
                continue  # still defined: this run's absent (or a later one) removes it and its files
            candidates = [p for p in intent["files"] if isinstance(p, str) and os.path.isabs(p)]
            candidates += [t for p in candidates for t in temp_paths(p)]
            existing = [p for p in candidates if os.path.lexists(p)]
            users = {p: scan.dependants(p) for p in existing}  # the host's one write guard
            removed = [p for p in existing if not users.get(p)]
            kept = [p for p in existing if users.get(p)]
            if not check_mode:
                for p in removed:
                    if os.path.isdir(p) and not os.path.islink(p):
                        _rmtree(p)
                    else:
                        st.unlink(p)
                self.done(intent["name"])
            report.append(dict(name=intent["name"], op=intent["op"], removed=removed, kept=kept))
        return report


def _rmtree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            st.unlink(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)
