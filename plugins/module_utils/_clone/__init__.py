# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Clones of a template domain, one concept per file (no re-exports: import the file you need).

- spec.py: the clone specs of a task (names, overrides, MACs, UUIDs), checked before the host is read
- transform.py: what changes per clone: its file names and its domain XML (pure lxml)
- lock.py: HostLock, the host-wide flock that keeps concurrent runs from picking the same MAC
- template.py: the template (a shut-off domain or XML text) and its disks, checked
- existing.py: clones already on the host: do they match, what to update, what to remove
- plan.py: the batch plan: every clone's action, paths, MACs, UUIDs and XML; touches nothing
- act.py: carrying out the plan: create with rollback, update, remove, protect bases
- result.py: the module result: clones, bases, diff
- manager.py: CloneManager, the kvm_clone module's options and its run
"""
