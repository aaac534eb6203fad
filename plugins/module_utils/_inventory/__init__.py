# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What the virtops.kvm.libvirt inventory plugin reads, without Ansible.

``uris`` checks the URIs and names their hypervisors, ``read`` lists one URI's
domains as plain (JSON, so cacheable) records, ``addresses`` finds a running
domain's address, ``gather`` reads every URI at once with a bounded timeout, and
``hosts`` turns the records into host names, groups and variables. The plugin
(plugins/inventory/libvirt.py) only adds Ansible: options, cache, warnings,
Constructable.

``address_manager`` is kvm_domain_address's work: the same address lookup as the
inventory, for a batch of domains, polled until every one has an address or the
timeout passes.
"""
