# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A VM made from a typed description (kvm_vm), one concept per file (no re-exports: import the file you need).

- spec.py: the options of one VM (top level or an item of vms), checked and normalized without libvirt
- osinfo.py: the libosinfo database (osinfo-db) read with lxml: an OS's device and resource defaults by short id
- files.py: where each disk's file goes, what must be made, every refusal, the making, the bases protected
- build.py: the domain XML from the options, the planned disks and the OS defaults (pure lxml)
- live.py: what a running VM takes without a restart (memory, vCPUs, hot-plugged disks and NICs), planned then applied
- converge.py: VmRun, one VM: its files, then kvm_domain's DomainRun on the XML, then the live changes; absent
- manager.py: VmManager, kvm_vm's work: one VM or a batch, planned from one scan under the host lock, then made
"""
