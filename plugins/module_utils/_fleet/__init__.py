# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One hypervisor's share of a fleet in one run (kvm_fleet_host), one concept per file (no re-exports).

- rules.py: the kvm_fleet role's rules as plain functions: which options go to kvm_clone for a clone,
  a clone as a kvm_domain batch item, the prune rule (the role's filters call them too)
- manager.py: FleetHostManager, kvm_fleet_host's work: kvm_domain_info, kvm_template, kvm_clone,
  kvm_network, kvm_domain and kvm_guestfs run in one module run over one connection
"""
