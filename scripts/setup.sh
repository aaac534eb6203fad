#!/usr/bin/env bash
# Set up everything virtops.kvm needs on a Debian 12 / Ubuntu machine, as root:
# distro packages, the project venv (pinned), the collection link Ansible loads
# it from, and a running virtlogd + libvirtd. Safe to run again: it only does
# what is missing and says what it did.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs packages and starts libvirtd)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "setup: needs a Debian or Ubuntu machine (apt-get not found)" >&2; exit 1; }

# ---- distro packages -------------------------------------------------------
packages=(
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu dnsmasq-base
  qemu-system-x86 qemu-utils libguestfs-tools python3-guestfs extlinux busybox-static xorriso openssh-server iproute2
  libvirt-dev pkg-config gcc python3-dev python3-venv git
  debootstrap e2fsprogs  # scripts/build-debian-guest.py: the real Debian 12 test guest (mkfs.ext4 -d)
  osinfo-db  # kvm_vm's os_variant defaults (libguestfs pulls it in too; named because the code reads it)
  ovmf  # UEFI firmware: the kvm_vm tests boot firmware: uefi and uefi-secure guests
)
# supermin (libguestfs's appliance builder) needs a host kernel under /boot.
compgen -G '/boot/vmlinuz-*' >/dev/null || packages+=(linux-image-amd64)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  diverted=""
  if [[ " ${missing[*]} " == *" linux-image-amd64 "* ]] && ! dpkg-divert --list /usr/sbin/update-initramfs | grep -q .; then
    # The kernel is only a file for supermin to read; building its initramfs costs
    # ~30 s per trigger for nothing. Divert for this install only, then restore.
    dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
    ln -sf /bin/true /usr/sbin/update-initramfs
    diverted=yes
  fi
  # No daemon of a package starts on its own (openssh-server's sshd would listen on
  # every address): this script starts the ones the project needs, its own way.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy=yes
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # also when the install fails
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  if [ -n "$diverted" ]; then
    rm -f /usr/sbin/update-initramfs
    dpkg-divert --local --rename --remove /usr/sbin/update-initramfs >/dev/null
  fi
else
  say "distro packages already installed"
fi

# ---- venv ------------------------------------------------------------------
# Made from the distro python with system site packages: python3-guestfs is only
# packaged for it. Pinned requirements are installed into the venv on top.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv from /usr/bin/python3"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned Python requirements into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
else
  say "Python requirements already installed"
fi
.venv/bin/python -c 'import guestfs, libvirt, lxml' \
  || { echo "setup: the venv cannot import guestfs/libvirt/lxml" >&2; exit 1; }

# ---- target Pythons ----------------------------------------------------------
# Managed hosts may run any Python the collection promises (tests/config.yml:
# 3.9 on EL 9 up to 3.13). The unit tests and ansible-test's compile/import
# sanity run on each: one venv per interpreter in .venv-targets/<version>
# (this machine's own 3.11 is .venv), and .venv-targets/bin/pythonX.Y links
# for ansible-test. Interpreters are found under pyenv (this machine kind
# carries them) or on PATH; a missing one is reported here and fails the test
# command in CI.
read -r -a targets < scripts/target-pythons
mkdir -p .venv-targets/bin
for v in "${targets[@]}"; do
  [ "$v" = "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ] && continue
  py=""
  for cand in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r) \
              "$(command -v "python$v" || true)"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    if [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ]; then
      py=$cand; break
    fi
  done
  if [ -z "$py" ]; then
    say "no Python $v found (pyenv or PATH): its unit tests cannot run here"
    continue
  fi
  ln -sfn "$py" ".venv-targets/bin/python$v"
  venv=.venv-targets/$v
  want=$( (cat requirements-targets.txt; echo "$py") | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    say "creating $venv from $py"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-targets.txt
    echo "$want" > "$venv/.requirements.sha256"
  fi
done

# ---- the collection as Ansible sees it ------------------------------------
# ansible.cfg points collections_path at .collections; link this checkout in as virtops.kvm.
mkdir -p .collections/ansible_collections/virtops
if [ "$(readlink .collections/ansible_collections/virtops/kvm 2>/dev/null)" != "../../.." ]; then
  ln -sfn ../../.. .collections/ansible_collections/virtops/kvm
  say "linked the checkout as .collections/ansible_collections/virtops/kvm"
fi

# ---- ansible-test offline --------------------------------------------------
# ansible-test's sanity venvs download a get-pip bootstrap script; with no
# internet, a stand-in that uses ensurepip + pip does the same job.
pipver=$(.venv/bin/python - <<'EOF'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
m = re.search(r"\bpip='([0-9.]+)'", src.read_text())
print(m.group(1) if m else "")
EOF
)
if [ -n "$pipver" ]; then
  cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
  if [ ! -f "$cache" ]; then
    mkdir -p "$(dirname "$cache")"
    cp scripts/get_pip_offline.py "$cache"
    say "installed the offline get-pip stand-in for ansible-test (pip $pipver)"
  fi
fi

# ---- /dev/kvm --------------------------------------------------------------
# udev gives /dev/kvm to group kvm (QEMU's user is in it). Without udev nothing
# does, and a chroot sharing /dev can chgrp it to that chroot's GID for "kvm":
# then libvirt re-probes QEMU on every call and domain defines stall.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
  chgrp kvm /dev/kvm && chmod g+rw /dev/kvm
  say "gave /dev/kvm to group kvm (no udev did it)"
fi

# ---- libvirt daemons -------------------------------------------------------
# In a chroot, / is not a mount point, and QEMU's private mount namespace (on by
# default) cannot be set up: every domain start fails with "Failed disable mount
# propagation out of the root filesystem". Turn the namespace off only there.
qemu_conf=/etc/libvirt/qemu.conf
if ! mountpoint -q / && [ -f "$qemu_conf" ] && ! grep -Eq '^[[:space:]]*namespaces[[:space:]]*=' "$qemu_conf"; then
  printf '\n# added by virtops.kvm scripts/setup.sh: / is not a mount point (chroot)\nnamespaces = []\n' >> "$qemu_conf"
  say "/ is not a mount point (chroot): disabled QEMU mount namespaces in $qemu_conf"
  bash scripts/libvirt-daemons.sh stop >/dev/null
fi
bash scripts/libvirt-daemons.sh start
say "done"
