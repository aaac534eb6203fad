#!/usr/bin/env bash
# Build the virtops.kvm docs site (HTML) from the collection itself, offline:
# the module, filter and role reference from DOCUMENTATION, the filters' YAML docs
# and meta/argument_specs.yml (antsibull-docs), plus the Markdown guides in docs/
# (Sphinx + MyST). Warnings are errors: a broken reference or link fails the build.
# Usage: scripts/build-docs.sh [DIR]   (default tests/output/docsite; the site is DIR/build/html)
# The linter (antsibull-docs lint-collection-docs) runs in scripts/test.sh's docs stage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
[ -x .venv/bin/antsibull-docs ] || { echo "build-docs: run scripts/setup.sh first" >&2; exit 1; }
export PATH="$here/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$here/ansible.cfg"  # finds the checkout as virtops.kvm (.collections)

out=$(realpath -m "${1:-tests/output/docsite}")
# Only a directory this script made (it leaves a mark) is replaced: never someone's files.
if [ -e "$out" ] && [ ! -f "$out/.virtops-docsite" ]; then
  [ -z "$(ls -A "$out" 2>/dev/null)" ] || { echo "build-docs: $out exists and is not a docs build; give another directory" >&2; exit 1; }
fi
rm -rf "$out"
mkdir -p "$out"
touch "$out/.virtops-docsite"
chmod 700 "$out"  # antsibull-docs writes only into a directory that only its owner can write

# The Sphinx project: conf.py as antsibull-docs makes it, then made offline.
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
  --project virtops.kvm --copyright "virtops.kvm contributors" --title "virtops.kvm" \
  --dest-dir "$out" virtops.kvm >/dev/null
cat >> "$out/conf.py" <<'EOF'

# ---- added by virtops.kvm scripts/build-docs.sh ----
# Offline: intersphinx reads only the local inventory written next to this file
# (the few ansible-core labels the generated pages link to), never the network.
import os.path  # noqa: E402

intersphinx_mapping = {
    "ansible_devel": (
        "https://docs.ansible.com/projects/ansible/devel/",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "ansible_devel.inv"),
    ),
}
# The guides in docs/ are Markdown.
extensions.append("myst_parser")
myst_heading_anchors = 3
EOF
# antsibull-docs' own settings, as sphinx-init writes them except that the
# collection links to its homepage (galaxy.yml), not to a Galaxy page it does not have.
homepage=$(python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["homepage"])')
cat > "$out/antsibull-docs.cfg" <<CFG
breadcrumbs = true
indexes = true
use_html_blobs = false
add_antsibull_docs_version = true
collection_url = {
  * = "$homepage"
}
collection_install = {
  * = "ansible-galaxy collection install {namespace}.{name}"
}
CFG
# The labels ansible-core's docs define that antsibull-docs' pages reference.
python - "$out/ansible_devel.inv" <<'EOF'
import sys, zlib
labels = [
    ("ansible_configuration_settings", "reference_appendices/config.html", "Ansible Configuration Settings"),
    ("common_return_values", "reference_appendices/common_return_values.html", "Return Values"),
    # a module with an action plugin (kvm_image) gets antsibull-docs' note linking these
    ("action_plugins", "plugins/action.html", "Action plugins"),
    ("ansible_collections.ansible.builtin.copy_module", "collections/ansible/builtin/copy_module.html",
     "ansible.builtin.copy module"),
]
head = "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n# The remainder of this file is compressed using zlib.\n"
# Environment variables of ansible-core's cache settings, which the inventory plugin's page names.
envvars = ["ANSIBLE_CACHE_PLUGIN" + s for s in ("", "_CONNECTION", "_PREFIX", "_TIMEOUT")]
body = "".join(f"{name} std:label -1 {uri} {title}\n" for name, uri, title in labels)
body += "".join(f"{name} std:envvar -1 reference_appendices/config.html#envvar-$ -\n" for name in envvars)
with open(sys.argv[1], "wb") as f:
    f.write(head.encode() + zlib.compress(body.encode()))
EOF

# The reference pages.
mkdir -p "$out/rst"
chmod 700 "$out/rst"
antsibull-docs --config-file "$out/antsibull-docs.cfg" collection --use-current --squash-hierarchy \
  --fail-on-error --dest-dir "$out/rst" virtops.kvm >/dev/null

# The guides, under guides/ in the collection's index; getting-started first. The site
# holds docs/ only: a link that leaves it (../bench/README.md) becomes its text; every
# other link must resolve.
mkdir -p "$out/rst/guides"
python - "$out/rst/guides" docs/*.md <<'PY'
import pathlib, re, sys
dest = pathlib.Path(sys.argv[1])
for src in map(pathlib.Path, sys.argv[2:]):
    text = re.sub(r"\[([^\]]+)\]\(\.\./[^)]*\)", r"\1", src.read_text())
    (dest / src.name).write_text(text)
PY
if [ -d docs/images ]; then cp -r docs/images "$out/rst/guides/images"; fi
cat >> "$out/rst/index.rst" <<'EOF'

.. toctree::
   :maxdepth: 1
   :caption: Guides
   :glob:

   guides/getting-started
   guides/*
EOF

sphinx-build -q -W --keep-going -b html -c "$out" "$out/rst" "$out/build/html"
echo "build-docs: the site is $out/build/html/index.html"
