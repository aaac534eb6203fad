# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_migrate: a domain put on another hypervisor, live or offline, its overlays handled.

- plan.py: what moves for each disk of the domain, decided before anything happens
- volumes.py: the image files of one hypervisor, through its libvirt storage API only (pools, streams)
- live.py: a live migration driven from this process, watched while it runs, aborted when it takes too long
- manager.py: MigrateManager, kvm_migrate's work (find the domain, plan, copy, migrate, the result)
"""
