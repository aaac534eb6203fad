# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_customize: offline edits of shut-off guests (files, authorized_keys, password hashes) in one appliance launch.

spec.py     the edits as the user gives them, checked before anything is looked up or launched
edit.py     one mounted guest: what each edit would change (compared first), then doing it
manager.py  CustomizeManager: domains -> refusals (running, the write guard) -> one appliance -> result
"""
