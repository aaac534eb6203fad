#!/usr/bin/env bash
# Start or stop virtlogd + libvirtd. Under systemd it asks systemctl (modular
# virtqemud where the distro ships it); with no init system (containers, CI)
# it runs the daemons itself, checking pids rather than sockets because /run
# is on disk and a killed daemon leaves stale files behind.
set -euo pipefail
action=${1:-start}
say() { printf 'libvirt: %s\n' "$*"; }

alive() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null   # PID 1 reaps late: a zombie is dead
}

if [ -d /run/systemd/system ]; then
  if systemctl list-unit-files virtqemud.service >/dev/null 2>&1 && systemctl cat virtqemud.service >/dev/null 2>&1; then
    units=(virtlogd.socket virtqemud.socket virtqemud-ro.socket virtqemud-admin.socket virtqemud.service)
  else
    units=(virtlogd.socket libvirtd.service)
  fi
  if [ "$action" = start ]; then
    systemctl enable --now "${units[@]}"
    say "enabled and started ${units[*]} with systemd"
  else
    systemctl stop "${units[@]}"
    say "stopped ${units[*]} with systemd"
  fi
  exit 0
fi

case $action in
  start)
    # QEMU opens a guest's pty console (kvm_vm makes one) through /dev/ptmx. Where it points at a devpts
    # mounted with ptmxmode=000 (seen here after a chroot's /dev was set up), only root may open it and QEMU,
    # running as libvirt-qemu, fails "Failed to create PTY": give it back the kernel's multiplexer device.
    if [ "$(stat -Lc %a /dev/ptmx 2>/dev/null)" = 0 ]; then
      rm -f /dev/ptmx && mknod -m 666 /dev/ptmx c 5 2 && say "made /dev/ptmx usable for QEMU's PTYs"
    fi
    if alive /run/virtlogd.pid; then say "virtlogd already running"; else virtlogd -d; say "started virtlogd (no init system)"; fi
    if alive /run/libvirtd.pid; then say "libvirtd already running"; else libvirtd -d; say "started libvirtd (no init system)"; fi
    # The first connection probes QEMU's capabilities (~8 s on a cold start).
    for _ in $(seq 1 240); do
      virsh -q -c qemu:///system version >/dev/null 2>&1 && { say "qemu:///system answers"; exit 0; }
      sleep 0.5
    done
    echo "libvirt: libvirtd did not answer on qemu:///system within 120 s" >&2
    exit 1
    ;;
  stop)
    for d in libvirtd virtlogd; do
      if alive "/run/$d.pid"; then
        kill -TERM "$(cat "/run/$d.pid")"
        for _ in $(seq 1 60); do alive "/run/$d.pid" || break; sleep 0.5; done
        say "stopped $d"
      fi
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
