# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Domain snapshots under the overlay rule, one concept per file (no re-exports: import the file you need).

- xml.py: the snapshot XML (pure lxml): read a snapshot, write the XML that creates or redefines one
- qcow2.py: what a qcow2 file says about its data (empty overlay? at an internal snapshot?), read directly
- layers.py: the layer files (names, the domain's chains) and the one rule: who else uses a layer
- context.py: one run on one domain: handle, check mode, journal, named libvirt calls, its snapshots
- blockjob.py: live block commit and pull with bounded waits
- create.py: state=present (internal, or external disk-only with a pause or the guest agent)
- revert.py: state=current (internal by libvirt; external as a fresh overlay on the snapshot's base)
- delete.py: state=absent (internal by libvirt; external merged by commit or pull, then forgotten)
- info.py: the per-snapshot dicts (list, tree, current) and SnapshotInfoManager (kvm_snapshot_info)
- manager.py: SnapshotManager, kvm_snapshot's work (compare, then act, then the result and diff)
"""
