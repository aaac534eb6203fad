# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The data of one kvm_clone run: the plan, one item per clone, one outcome per clone.

The planner makes a ``Plan`` of ``Item``s (touching nothing); the act phases
each return an ``Outcome`` per clone; the result is built from the two. What
happened to a failed clone is a field of its outcome (``rolled_back``,
``files_kept``), never read back out of its message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Item.action
CREATE, UPDATE, NONE, REMOVE, REMOVE_XML = "create", "update", "none", "remove", "remove_xml"

# Outcome.rolled_back: what the undo of a failed create did
NOT_ROLLED_BACK = ""  # nothing to undo: the clone did not fail, or is not new
ROLLED_BACK = "complete"  # domain and every file it made are gone
PARTLY_ROLLED_BACK = "partial"  # undone, but a file could not be deleted (named in the error)
KEPT = "kept"  # nothing undone: whether the domain exists is unknown, or it could not be undefined


@dataclass
class Item:
    """What the run does with one clone, and what the result reports of it.

    Every item has ``action``, ``spec``, ``name``, ``uuid``, ``macs`` and
    ``disks``; the other fields belong to one kind: a new clone (``create``:
    ``nvram``, ``seed``, ``identity``), an existing one (``update``/``none``:
    ``actions``, ``identity_record``, ``seed_file``) or one to remove
    (``absent``: ``files``, ``xml_paths``).
    """

    action: str
    spec: dict
    name: str
    uuid: str | None = None
    macs: list = field(default_factory=list)
    disks: list = field(default_factory=list)
    xml_path: str | None = None
    #: the new domain's XML (create) or the defined one (existing, when an XML file is kept in step)
    xml: str | None = None
    dom: Any = None
    active: bool = False
    #: the clone is to be absent (remove, remove_xml, or none when it is already gone)
    absent: bool = False
    #: existing clone: start, autostart, write_xml
    actions: list = field(default_factory=list)
    #: absent: the files it created that it still uses ``[{path, nvram}]``, and its XML files
    files: list = field(default_factory=list)
    xml_paths: list = field(default_factory=list)
    #: new clone: (template's NVRAM file, the clone's), its seed ``{path, documents}``, its reset plan
    nvram: tuple | None = None
    seed: dict | None = None
    identity: dict | None = None
    identity_source: str | None = None
    #: existing clone: what its reset did when it was made, and its seed file
    identity_record: dict | None = None
    seed_file: str | None = None

    def files_view(self) -> dict:
        """``{name, disks, nvram, seed}``: the files a new clone makes, as space.py reads them."""
        return dict(name=self.name, disks=self.disks, nvram=self.nvram, seed=self.seed)


@dataclass
class Plan:
    """The batch, decided against one host scan: every item, the bases, the directories."""

    template: dict | None
    items: list
    bases: list
    dest_dir: str | None
    xml_dir: str | None
    domain_type_reason: str | None
    reservations: Any
    drifted: list
    base_prints: Any
    space: list

    def creates(self) -> list:
        return [i for i in self.items if i.action == CREATE]

    def absent(self) -> list:
        return [i for i in self.items if i.absent]

    def kept(self) -> list:
        """Existing clones that stay (updated or not)."""
        return [i for i in self.items if i.action in (UPDATE, NONE) and not i.absent]


@dataclass
class Outcome:
    """What happened to one clone in this run (or would, in check mode)."""

    ok: bool = True
    changed: bool = False
    error: str = ""
    #: the identity reset's report (real run) or plan (check mode), for a new clone
    identity: dict | None = None
    rolled_back: str = NOT_ROLLED_BACK
    #: the clone's files stay for the next run to finish or remove (its intent stays open)
    files_kept: bool = False

    @property
    def intent_open(self) -> bool:
        """Whether the clone's intent journal must stay for the next run: something of it is left."""
        return not self.ok and self.rolled_back in (PARTLY_ROLLED_BACK, KEPT)


def failed(error: str) -> Outcome:
    """A clone that failed with nothing made to undo (an update or a removal)."""
    return Outcome(ok=False, changed=False, error=error)
