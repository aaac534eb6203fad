# Private to the virtops.kvm collection: not a public API, may change without notice.
"""NetworkManager, the kvm_network module's work: compare, then act, then report.

One ``run()`` per task: build the wanted definition (``definition``), predict
what a define leaves (``compare.predict``), refuse what cannot work
(``checks``), then act: a change confined to DHCP/DNS host entries is made
with virNetworkUpdate, live on a running network and in its definition, so
guests keep their links; any other change is defined and, on a running
network, waits for a restart (``pending_restart``) that happens only with
``restart: true``. Stopping, restarting or removing a network that running
domains use needs ``force: true``. Check mode notes every change exactly as a
real run makes it, so ``changed``, ``changes`` and the diff are the same.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _dhcp
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._network import checks, compare, report
from ansible_collections.virtops.kvm.plugins.module_utils._network.definition import wanted_root
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScansHost

STATES = ["present", "active", "inactive", "absent"]
_HOST = dict(
    mac=dict(type="str"),
    ip=dict(type="str"),
    name=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
_DNS_HOST = dict(
    ip=dict(type="str", required=True),
    hostnames=dict(type="list", elements="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
_IP = dict(
    address=dict(type="str", required=True),
    prefix=dict(type="int"),
    dhcp_ranges=dict(
        type="list",
        elements="dict",
        options=dict(start=dict(type="str", required=True), end=dict(type="str", required=True)),
    ),
    dhcp_hosts=dict(type="list", elements="dict", options=_HOST),
)


def _snapshot(state: str, autostart: bool, root) -> str:
    """The diff's text: state, autostart flag and the definition."""
    return f"state: {state}\nautostart: {str(autostart).lower()}\n\n" + (nx.tostring(root) if root is not None else "")


class NetworkManager(ScansHost, Manager):
    """Bring one virtual network to the requested definition and state (see the kvm_network module)."""

    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=STATES),
        xml=dict(type="str"),
        forward_mode=dict(type="str", choices=list(nx.FORWARD_MODES)),
        bridge=dict(type="str"),
        ips=dict(type="list", elements="dict", options=_IP),
        dns_hosts=dict(type="list", elements="dict", options=_DNS_HOST),
        purge_hosts=dict(type="bool", default=False),
        autostart=dict(type="bool"),
        restart=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
    )

    # ------------------------------------------------------------------ helpers

    def _do(self, label: str, call, *args) -> None:
        """Note ``label``; make the libvirt call unless in check mode."""
        if not self.note(label):
            return
        try:
            call(*args)
        except _deps.libvirt.libvirtError as exc:
            raise libvirt_failed(exc, f"Network {self.p['name']!r}: {label}") from exc

    def users(self) -> list[dict]:
        return report.users(self.scan(), self.p["name"])

    def _refuse_cutting(self, what: str) -> None:
        """Stopping, restarting or removing a network cuts the running domains on it: only with force."""
        running = [u["domain"] for u in self.users() if u["active"]]
        if running and not self.p["force"]:
            raise Conflict(
                f"Network {self.p['name']!r} is not {what}: running domain(s) {', '.join(running)} use it and "
                "would lose their network.",
                hint="Shut them down first, or set force: true.",
                used_by=running,
            )

    def _defines(self) -> bool:
        p = self.p
        return any(p[k] is not None for k in ("xml", "forward_mode", "bridge", "ips", "dns_hosts")) or p["purge_hosts"]

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        p = self.p
        name = vd.validate_name(p["name"], "name")
        net = _dhcp.lookup(self.conn, name)
        config = _dhcp.config_root(net) if net is not None else None
        was_active = bool(net.isActive()) if net is not None else False
        persistent = bool(net.isPersistent()) if net is not None else False
        autostart_before = bool(net.autostart()) if persistent else False
        config_c = compare.canonical(config) if config is not None else None
        before_state = "active" if was_active else "inactive"
        before = _snapshot(before_state, autostart_before, config_c) if net is not None else ""
        if p["state"] == "absent":
            after, pending = self._absent(net, was_active, persistent), False
            final = None if not self.check_mode else net
        else:
            after, pending = self._converge(net, config, config_c, was_active, persistent, autostart_before)
            final = _dhcp.lookup(self.conn, name) if not self.check_mode else net
        header = f"network {name} (state and definition)"
        network = None
        if final is not None:
            network = report.network_info(final, _dhcp.config_root(final), self.users(), pending)
        changed = bool(self.changes)
        return dict(
            changed=changed,
            changes=self.changes,
            pending_restart=pending,
            network=network,
            diff=dict(before_header=header, after_header=header, before=before, after=after if changed else before),
        )

    def _absent(self, net, was_active: bool, persistent: bool) -> str:
        if net is None:
            return ""
        idle = [u["domain"] for u in self.users() if not u["active"]]
        if was_active:
            self._refuse_cutting("removed")
            self._do("stop", net.destroy)
        if persistent:
            self._do("undefine", net.undefine)
        if idle:
            self.warn(
                f"Domain(s) {', '.join(idle)} have an interface on network {self.p['name']!r} and cannot start "
                "without it."
            )
        return ""

    def _wanted(self, net, config, config_c):
        """The canonical definition the task wants (the current one when it names nothing to define)."""
        if net is None and not any(self.p[k] for k in ("xml", "forward_mode", "bridge", "ips")):
            raise InvalidInput(
                f"Network {self.p['name']!r} is not defined, and the task gives nothing to define it with.",
                hint="Give xml, or forward_mode, bridge and ips.",
            )
        if net is not None and not self._defines():
            return config_c
        wanted, from_xml = wanted_root(self.p, config)
        return compare.predict(wanted, from_xml, config)

    def _converge(self, net, config, config_c, was_active: bool, persistent: bool, autostart_before: bool):
        """Every state but absent: decide (and refuse) everything first, then define, update, restart, start/stop."""
        p = self.p
        state = p["state"]
        predicted = self._wanted(net, config, config_c)
        checks.refuse_problems(predicted)
        will_be_active = state == "active" or (state == "present" and was_active)
        diffs = compare.differences(predicted, config_c) if config_c is not None else ["new"]
        if diffs or (will_be_active and not was_active):
            # a subnet collides only when it comes up: at a start, or when a running network gets new ones
            subnets = [b["subnet"] for b in nx.ip_blocks(predicted)]
            readdressed = config_c is None or subnets != [b["subnet"] for b in nx.ip_blocks(config_c)]
            coming_up = will_be_active and (not was_active or readdressed)
            checks.check_host(self.conn, self.uri, predicted, config, coming_up)
        keep_live = was_active and state != "inactive"
        live_c = compare.canonical(_dhcp.live_root(net)) if keep_live else None
        live_changes = _dhcp.host_changes(live_c, predicted) if keep_live else []
        config_changes = _dhcp.host_changes(config_c, predicted) if persistent and diffs else []
        hosts_only = (
            persistent
            and bool(diffs)
            and compare.same(compare.canonical(_dhcp.predict(config_c, config_changes)), predicted)
        )
        pending = keep_live and not compare.same(compare.canonical(_dhcp.predict(live_c, live_changes)), predicted)
        restart = pending and p["restart"]
        if restart:
            self._refuse_cutting("restarted")
        if state == "inactive" and was_active:
            self._refuse_cutting("stopped")
        # act (each step only noted in check mode)
        if net is None:
            self._do("define", self._define, predicted)
        elif hosts_only:
            for change, live, cfg in _dhcp.merged(config_changes, live_changes):
                where = "running and defined" if live and cfg else "running" if live else "defined"
                self._do(f"{change['label']} ({where})", _dhcp.apply, net, [change], live, cfg)
            live_changes = []
        elif diffs or not persistent:
            self.changes.extend(f"definition: {d}" for d in diffs)
            self._do("define" if persistent else "define (make persistent)", self._define, predicted)
        if not restart:
            for change in live_changes:
                self._do(f"{change['label']} (running)", _dhcp.apply, net, [change], True, False)
        else:
            self._do("restart", self._restart)
            pending = False
        self._transition(net, state, was_active)
        autostart = autostart_before
        if p["autostart"] is not None and p["autostart"] != autostart_before:
            self._do(f"autostart {'on' if p['autostart'] else 'off'}", self._autostart, p["autostart"])
            autostart = p["autostart"]
        if keep_live and not restart and not self.check_mode:
            pending = self._pending_now()
        return _snapshot("active" if will_be_active else "inactive", autostart, predicted), pending

    def _transition(self, net, state: str, was_active: bool) -> None:
        if state == "active" and not was_active:
            self._do("start", self._start)
        elif state == "inactive" and was_active:
            self._do("stop", net.destroy)

    # ------------------------------------------------------------------ libvirt calls (real runs only)

    def _net(self):
        return self.conn.networkLookupByName(self.p["name"])

    def _define(self, predicted) -> None:
        self.conn.networkDefineXML(nx.tostring(predicted))

    def _start(self) -> None:
        self._net().create()

    def _restart(self) -> None:
        net = self._net()
        net.destroy()
        net.create()

    def _autostart(self, value: bool) -> None:
        self._net().setAutostart(1 if value else 0)

    def _pending_now(self) -> bool:
        """Whether the running network differs from its definition, read back after acting."""
        net = self._net()
        if not net.isActive() or not net.isPersistent():
            return False
        live = compare.canonical(_dhcp.live_root(net))
        return not compare.same(live, compare.canonical(_dhcp.config_root(net)))
