# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Clones of a template domain, one concept per file (no re-exports: import the file you need).

A run flows one way: scan -> plan -> make files -> reset identity -> define -> result.

- spec.py: the clone specs of a task (names, overrides, MACs, UUIDs), checked before the host is read
- transform.py: what changes per clone: its file names and its domain XML (pure lxml)
- lock.py: HostLock, the host-wide flock that keeps concurrent runs from picking the same MAC
- template.py: the template (a shut-off domain or XML text) and its disks, checked
- existing.py: clones already on the host: do they match, what to update, what to remove
- model.py: the typed data of a run: Plan, Item (one per clone), Outcome (rolled_back, files_kept as fields)
- plan.py: the batch plan: every clone's action, paths, MACs, UUIDs and XML; touches nothing
- space.py: free space for the batch's new files: the precheck before anything is made, and ENOSPC explained
- seed.py: a clone's cloud-init NoCloud seed: its documents, the 'cidata' ISO and its CD-ROM
- network.py: a fleet on a libvirt network: first NIC attached, one DHCP reservation per clone
- journal.py: the intent journal that lets a rerun finish or remove what an interrupted run left
- act.py: the act phases: remove, make files, define (each create rolled back on failure), update, protect bases
- identity.py: the identity option, each clone's reset plan, and one appliance for a batch of clones
- layout.py: where a batch's guest filesystems mount, found once on its first clone
- sysprep.py: the identity operations on one mounted disk (hostname, machine-id, SSH keys, leases, logs, files)
- reset.py: the identity-reset phase: write guard, appliances, each report recorded in the clone's XML
- result.py: the module result: clones, bases, diff
- manager.py: CloneManager, the kvm_clone module's options and its run (the phases in order)
- seal.py: a sealed template: what sealing does in the guest, and the record that says it is sealed
- template_manager.py: TemplateManager, the kvm_template module's work (seal a template once)
"""
