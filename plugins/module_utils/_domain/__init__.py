# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One libvirt domain, one concept per file (no re-exports: import the file you need).

- info.py: reading domains (domain_info, list_domains) and DomainInfoManager, kvm_domain_info's work
- restart.py: what needs a restart (the persistent config against the running one)
- context.py: one run on one domain: its name, check mode, the journal of changes, named libvirt calls
- config.py: validating the options, define/update of the persistent config, autostart, live metadata
- transitions.py: the lifecycle state machine (start, shutdown with a bounded wait, reboot, pause, destroy)
- disks.py: the disk rules (no start of a clone base, no removal of storage in use) from one HostScan
- removal.py: state=absent (storage plan, shutdown, undefine, delete the planned files)
- boot.py: the wait for a boot marker on the serial console log after a start
- converge.py: DomainRun, one domain brought to its config and state (compare, then act, then its result and diff)
- batch.py: the domains option: every item planned from one host scan, then acted on concurrently
- manager.py: DomainManager, kvm_domain's work (one DomainRun, or a batch)
"""
