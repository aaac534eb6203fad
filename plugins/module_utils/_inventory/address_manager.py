# Private to the virtops.kvm collection: not a public API, may change without notice.
"""AddressManager, kvm_domain_address's backend: wait until every domain of a batch has an address.

One loop polls every domain still without an address (leases, guest agent,
ARP: addresses.py, the inventory plugin's own rules, so the address a play
waited for is the ``ansible_host`` the refreshed inventory gives), sleeps,
and polls again, until all have one or the timeout passes: a batch waits as
long as its slowest guest, not the sum. A domain that is not running can
never get one and fails at once (the others are still waited for). Check
mode reads once and waits for nothing; a domain that does not exist yet (a
clone a check-mode kvm_clone only planned) is then reported, not an error.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import addresses
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Deadline, wait_until

FAMILIES = ("ipv4", "ipv6", "any")


class AddressManager(Manager):
    """The addresses of a batch of domains, waited for together within one timeout."""

    ARGUMENT_SPEC = dict(
        name=dict(type="list", elements="str", required=True, aliases=["names"]),
        sources=dict(type="list", elements="str", choices=list(addresses.SOURCES), default=addresses.DEFAULT_SOURCES),
        family=dict(type="str", choices=list(FAMILIES), default="ipv4"),
        wait=dict(type="bool", default=True),
        timeout=dict(type="int", default=300),
    )
    #: the clock of the wait loop (unit tests give a fake one) and the seconds between two polls
    SEAMS = dict(clock=SYSTEM, interval=2.0)

    def __init__(self, params: dict, *args, **kwargs):
        # the guest agent answers only on a read-write connection
        self.READONLY = "agent" not in (params.get("sources") or addresses.DEFAULT_SOURCES)
        super().__init__(params, *args, **kwargs)
        if self.p["timeout"] < 0:
            raise InvalidInput("timeout must be 0 or more seconds.")
        self.sources = addresses.check_sources(self.p["sources"])
        self.names = list(dict.fromkeys(vd.existing_name(n, "name") for n in self.p["name"] or []))
        if not self.names:
            raise InvalidInput("name lists no domain.", hint="Give the domains whose addresses to wait for.")

    def run(self) -> dict:
        lv = _deps.libvirt
        deadline = Deadline(self.p["timeout"], self.clock)
        doms, results = {}, {}
        for n in self.names:
            try:
                doms[n] = self.conn.lookupByName(n)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                    raise
                results[n] = _none(f"domain {n} is not defined")
        if len(results) and not self.check_mode:
            raise DomainNotFound(
                f"Domain(s) {', '.join(results)} are not defined at {self.uri}; nothing was waited for.",
                hint="Create them first (virtops.kvm.kvm_clone), or fix the names.",
            )
        pending = list(doms)

        def settled() -> bool:
            for n in list(pending):
                found = self._poll(doms[n])
                results[n] = found
                if found["address"] is not None or found.pop("final", False):
                    pending.remove(n)
            return not pending or not self.p["wait"] or self.check_mode

        wait_until(settled, deadline, self.interval, cap=True)  # the last sleep ends at the deadline
        waited = round(deadline.elapsed(), 1)
        out = dict(
            changed=False,
            addresses={n: results[n] for n in self.names},
            hosts={n: results[n]["address"] for n in self.names if results[n]["address"]},
            waited=waited,
        )
        missing = [n for n in self.names if results[n]["address"] is None]
        if missing and self.check_mode:
            self.warn(f"Check mode: {', '.join(missing)} have no address now; a real run waits for them.")
        elif missing:
            why = "; ".join(f"{n}: {results[n]['error']}" for n in missing)
            raise KvmError(
                f"{len(missing)} of {len(self.names)} domain(s) have no {self._family_word()} address after "
                f"{waited} s ({', '.join(missing)}). {why}.",
                hint="Check that they boot and get a DHCP lease (or run a guest agent), or raise timeout.",
                **out,
                missing=missing,
            )
        return out

    def _family_word(self) -> str:
        return {"ipv4": "IPv4", "ipv6": "IPv6", "any": "usable"}[self.p["family"]]

    def _poll(self, dom) -> dict:
        """``{address, source, addresses, error[, final]}`` now; ``final`` when waiting cannot help."""
        lv = _deps.libvirt
        try:
            state = dom.state()[0]
            if state != lv.VIR_DOMAIN_RUNNING:
                return dict(_none(f"the domain is not running (state {state}); it will get no address"), final=True)
            live = dx.parse(dom.XMLDesc(0))
        except lv.libvirtError as exc:
            return dict(_none(f"libvirt: {exc.get_error_message() or exc}"), final=True)
        macs = [m.lower() for m in dx.macs(live)]
        found = addresses.find(dom, live, macs, self.sources)
        family = self.p["family"]
        if family != "any" and found["address"] is not None:
            fitting = [a for a in found["addresses"] if a["family"] == family]
            if not fitting:
                return _none(f"{found['source']}: only {', '.join(a['address'] for a in found['addresses'])}")
            found = dict(found, address=fitting[0]["address"], addresses=fitting)
        return found


def _none(why: str) -> dict:
    return dict(address=None, source=None, addresses=[], error=why)
