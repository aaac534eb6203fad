#!/usr/bin/env bash
# Run every test of virtops.kvm: lint, unit, ansible-test sanity, integration
# against the real qemu:///system daemon, molecule, and the packaging check.
# Usage: scripts/test.sh [stage ...]   stages: lint unit sanity integration molecule package
# (default: all, in that order). Any failing stage fails the run; so does a
# pytest stage that ran no test (pytest exits 5).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
[ -x .venv/bin/python ] || { echo "test: run scripts/setup.sh first" >&2; exit 1; }
export PATH="$here/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$here/ansible.cfg"
export LIBVIRT_DEFAULT_URI=${LIBVIRT_DEFAULT_URI:-qemu:///system}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint unit sanity integration molecule package)
banner() { printf '\n==== %s ====\n' "$*"; }

stage_lint() {
  banner "ruff"
  ruff check .
  ruff format --check .
  banner "antsibull-changelog lint (changelogs/fragments)"
  antsibull-changelog lint
  banner "ansible-lint (production profile)"
  ansible-lint --profile production roles playbooks
}

stage_unit() {
  banner "unit tests (pytest, libvirt test:///default, no daemon)"
  pytest -q -p no:cacheprovider tests/unit
}

# extra ansible-test sanity arguments, e.g. SANITY_ARGS="--test pylint"
read -r -a SANITY_ARGS <<< "${SANITY_ARGS:-}"
stage_sanity() {
  banner "ansible-test sanity"
  local tmp
  tmp=$(mktemp -d /tmp/virtops-sanity.XXXXXX)
  trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$tmp/ansible_collections/virtops/kvm"
  # The collection's content as git would ship it (tracked plus untracked-but-not-ignored),
  # without the developer tooling that galaxy.yml's build_ignore also leaves out
  # (scripts/, bench/, .ci/: plain Python/bash programs, linted by ruff instead).
  git ls-files -co --exclude-standard -z -- . ':!scripts' ':!bench' ':!.ci' \
    | xargs -0 cp --parents -t "$tmp/ansible_collections/virtops/kvm"
  (cd "$tmp/ansible_collections/virtops/kvm" && ansible-test sanity --venv --python 3.11 --color no "${SANITY_ARGS[@]}")
}

stage_integration() {
  bash scripts/libvirt-daemons.sh start
  banner "integration tests (real qemu:///system, qcow2, libguestfs)"
  pytest -q -p no:cacheprovider tests/integration
}

stage_molecule() {
  bash scripts/libvirt-daemons.sh start
  local s
  for s in extensions/molecule/*/; do
    [ -f "$s/molecule.yml" ] || continue
    banner "molecule $(basename "$s")"
    (cd extensions && molecule test -s "$(basename "$s")")
  done
}

stage_package() {
  banner "collection build, install into an empty path, run from outside the repo"
  pytest -q -p no:cacheprovider tests/package
}

for s in "${stages[@]}"; do
  "stage_$s"
done
banner "all requested stages passed: ${stages[*]}"
