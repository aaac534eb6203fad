# Private to the virtops.kvm collection: not a public API, may change without notice.
"""libvirt storage pools and their volumes, one concept per file (import the file you need).

- pool_xml.py: the pool definition from the options, and its semantic compare (pure lxml)
- volume_xml.py: sizes, the volume definition and its read-out (pure lxml)
- handles.py: libvirt lookups and the pool/volume facts the modules return
- usage.py: who uses a pool or a volume (HostScan's rule plus disks by pool name and inside the path)
- pool_manager.py: PoolManager, kvm_pool's work (define, autostart, start/stop, restart, refresh)
- pool_removal.py: kvm_pool state=absent (refuse while used, optionally delete the volumes)
- transfer.py: volume upload/download through libvirt streams, with sha256 and progress
- volume_manager.py: VolumeManager, kvm_volume's work (create, clone, grow, delete)
- volume_content.py: kvm_volume's upload and download (idempotent by checksum)
"""
