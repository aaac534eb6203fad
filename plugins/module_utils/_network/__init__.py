# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One libvirt virtual network, one concept per file (no re-exports: import the file you need).

- definition.py: the wanted definition from the options (or the given XML), host entries merged
- checks.py: what makes a definition unusable (addresses, ranges, hosts, bridges), refused before any change
- compare.py: the semantic compare and the definition a define would leave (what libvirt fills in is kept)
- report.py: what is reported about a network (definition, state, leases, the domains that use it)
- manager.py: NetworkManager, kvm_network's work (compare, then act, then the result and diff)
"""
