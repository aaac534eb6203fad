# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Read-only looks inside guest disks, for kvm_guestfs.

drives.py   what to open and whether it may be opened: drives, formats, mounts option, running users, force_tcg
session.py  the one read-only libguestfs appliance of a run: launch, inspection, mounting, shutdown
devices.py  several domains in one appliance: whose drive is which, and each guest's device names
read.py     one read run: files and listings through the session, size limits, copies to dest
mount.py    guestmount and guestunmount: a read-only FUSE process on a mount point
guest.py    a mounted guest's regular files and its own users and groups (kvm_clone's reset, kvm_customize)
manager.py  GuestfsManager: options -> drives -> safety checks -> read run or (un)mount -> result
"""
