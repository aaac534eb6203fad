"""The test helpers as a package: ``from tests import guestlib, harness`` (tests and bench/, run from the repo root).

``fakes`` (the unit tests' test:///default helpers and in-memory libguestfs), ``guestlib`` (the tiny test guest),
``harness`` (run a module as Ansible does), ``nethost`` and ``ground`` (simulated hypervisors), ``realguest``
(the Debian 12 guest).
"""
