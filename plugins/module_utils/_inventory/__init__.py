# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What the virtops.kvm.libvirt inventory plugin reads, without Ansible, and kvm_domain_address's work.

- uris.py: the URIs checked, and the hypervisor each one names
- read.py: one URI's domains as plain (JSON, so cacheable) records
- addresses.py: a running domain's address (DHCP leases, the guest agent, ARP)
- gather.py: every URI read at once, with a bounded timeout
- hosts.py: the records turned into host names, groups and variables
- address_manager.py: AddressManager, kvm_domain_address's work: the same address lookup for a batch of
  domains, polled until every one has an address or the timeout passes

The plugin (plugins/inventory/libvirt.py) only adds Ansible: options, cache, warnings, Constructable.
"""
