#!/usr/bin/env bash
# Run every test of virtops.kvm: lint, the docs linter, unit, the property-based fuzzing of every module
# and filter, ansible-test sanity, integration against the real qemu:///system daemon, molecule, and the
# packaging check.
# Usage: scripts/test.sh [stage ...]   stages: lint docs unit fuzz sanity integration molecule package
# (default: all, in that order). Any failing stage fails the run; so does a
# pytest stage that ran no test (pytest exits 5).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
[ -x .venv/bin/python ] || { echo "test: run scripts/setup.sh first" >&2; exit 1; }
# .venv-targets/bin: the other target Pythons (setup.sh links them), for ansible-test
export PATH="$here/.venv/bin:$here/.venv-targets/bin:$PATH"
export ANSIBLE_CONFIG="$here/ansible.cfg"
export LIBVIRT_DEFAULT_URI=${LIBVIRT_DEFAULT_URI:-qemu:///system}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint docs unit fuzz sanity integration molecule package)
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

stage_docs() {
  # What the docs site is built from (scripts/build-docs.sh builds the HTML): module and
  # filter DOCUMENTATION, role argument specs, docs/docsite/, every reference checked.
  banner "antsibull-docs lint-collection-docs"
  antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs .
}

# Every Python the collection promises for managed hosts (scripts/target-pythons).
read -r -a TARGETS < scripts/target-pythons
OWN=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
missing_target() {
  # .ci/run (on this project's machine kind, which carries them all) must prove every
  # promised Python; any other machine without one is told so loudly.
  if [ -n "${VIRTOPS_REQUIRE_ALL_PYTHONS:-}" ]; then
    echo "test: Python $1 is not set up (scripts/setup.sh found no interpreter for it)" >&2
    return 1
  fi
  printf 'test: WARNING: Python %s not set up here; its %s were not run\n' "$1" "$2" >&2
}

stage_unit() {
  # tests/unit/fuzz is its own stage (fuzz, below): Hypothesis is in the main venv only.
  banner "unit tests on Python $OWN (pytest, libvirt test:///default, no daemon)"
  pytest -q -p no:cacheprovider tests/unit --ignore=tests/unit/fuzz
  local v
  for v in "${TARGETS[@]}"; do
    [ "$v" = "$OWN" ] && continue
    if [ ! -x ".venv-targets/$v/bin/python" ]; then
      missing_target "$v" "unit tests"
      continue
    fi
    banner "unit tests on Python $v"
    ".venv-targets/$v/bin/python" -m pytest -q -p no:cacheprovider tests/unit --ignore=tests/unit/fuzz
  done
}

stage_fuzz() {
  # Every module's arguments and every filter, fuzzed with Hypothesis against test:///default: a fixed
  # seed and VIRTOPS_FUZZ_EXAMPLES inputs per target (docs/development.md, "Fuzzing"). Hypothesis must
  # be there: VIRTOPS_FUZZ_REQUIRED turns a missing one into a failure instead of a skip.
  banner "fuzz: every module and filter (Hypothesis, libvirt test:///default)"
  VIRTOPS_FUZZ_REQUIRED=1 pytest -q -p no:cacheprovider tests/unit/fuzz
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
  # (files deleted in the work tree but not yet in git are left out)
  git ls-files -co --exclude-standard -z -- . ':!scripts' ':!bench' ':!.ci' \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$tmp/ansible_collections/virtops/kvm"
  (cd "$tmp/ansible_collections/virtops/kvm" && ansible-test sanity --venv --python "$OWN" --color no "${SANITY_ARGS[@]}")
  # The tests that depend on the interpreter (does it compile, does it import),
  # on every other promised Python.
  local v
  for v in "${TARGETS[@]}"; do
    [ "$v" = "$OWN" ] && continue
    if ! command -v "python$v" >/dev/null; then
      missing_target "$v" "compile/import sanity tests"
      continue
    fi
    banner "ansible-test sanity compile + import on Python $v"
    (cd "$tmp/ansible_collections/virtops/kvm" \
      && ansible-test sanity --venv --python "$v" --color no --test compile --test import "${SANITY_ARGS[@]}")
  done
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
