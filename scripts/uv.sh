# Sourced by the install scripts: sets UV to the pinned uv (requirements-tools.txt), installing it
# under build/uv on first use, and points uv at a local Python >= 3.11 (it never downloads one).

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "nachbar needs Python >= 3.11; install it or set PYTHON=/path/to/python3.11" >&2
  return 1
}

UV_PYTHON="$(find_python)"
UV_PYTHON_DOWNLOADS=never
export UV_PYTHON UV_PYTHON_DOWNLOADS

uv_version="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements-tools.txt)"
UV="$PWD/build/uv/bin/uv"
if ! "$UV" --version 2>/dev/null | grep -qF "uv $uv_version"; then
  rm -rf build/uv
  "$UV_PYTHON" -m venv build/uv
  build/uv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements-tools.txt
fi
