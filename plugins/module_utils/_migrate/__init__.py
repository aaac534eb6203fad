# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_migrate: a domain put on another hypervisor, live or offline, its overlays handled (see manager.py)."""
