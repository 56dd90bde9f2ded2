#!/bin/sh
# Leave out of a virtual environment what serving never loads (~46 MB, see the Dockerfile):
# test suites shipped inside wheels (numpy's, onnx's backend conformance data) and the debug sections of
# extension modules (uvloop's alone are 12 MB). Only debug sections, and not in vendored *.libs, which
# auditwheel patched with patchelf: stripping those further can break them.
# Usage: slim-venv.sh VENV
set -eu
site=$(echo "$1"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "slim-venv: no site-packages under $1" >&2; exit 1; }
find "$site" -depth -type d -name tests -exec rm -rf {} +
rm -rf "$site/onnx/backend/test"
find "$site" -name '*.cpython-*.so' -not -path '*.libs/*' -exec strip --strip-debug {} +
