# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The hypervisor host, one concept per file (no re-exports: import the file you need).

- files.py: reading host files under a ``root`` (so tests point it at a fake tree)
- probe.py: the hardware probe and the kvm/qemu verdict (the only part other packages import)
- packages.py: the distribution family, its packages and its package manager
- daemons.py: the init system and the libvirt daemon (systemd units or directly started)
- versions.py: libvirt and QEMU versions, and whether the daemon answers
- manager.py: HostManager, the kvm_host module's work (packages, then daemon, then probe)
- info.py: HostInfoManager, kvm_host_info's read of capacity and domains (fleet placement)
"""
