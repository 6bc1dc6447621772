#!/usr/bin/env bash
# Quick start, step 2: the whole test suite (installs what it needs first).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k schema
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --install || exit $?
export TURBOK_IMAGES=${TURBOK_IMAGES:-$HOME/.turbok/images}

# The compatibility tests also drive Debian 12's own kubectl (1.20, package kubernetes-client),
# which validates with the protobuf OpenAPI v2 document. When the kubectl on PATH is another one,
# unpack the Debian package's binary beside the checkout (not installed: it would replace that kubectl).
legacy_kubectl() {
  if dpkg -s kubernetes-client >/dev/null 2>&1; then echo /usr/bin/kubectl; return; fi
  local dir=.cache/kubernetes-client
  if [ ! -x "$dir/usr/bin/kubectl" ]; then
    mkdir -p "$dir" && chmod 755 "$dir"
    (cd "$dir" && { apt-get download -qq kubernetes-client 2>/dev/null ||
                    { apt-get update -qq && apt-get download -qq kubernetes-client 2>/dev/null; }; } &&
     dpkg-deb -x kubernetes-client_*.deb . && rm -f kubernetes-client_*.deb) || return 0
  fi
  echo "$PWD/$dir/usr/bin/kubectl"
}
if [ -z "${TURBOK_LEGACY_KUBECTL:-}" ]; then
  TURBOK_LEGACY_KUBECTL=$(legacy_kubectl)
  export TURBOK_LEGACY_KUBECTL
fi
.venv/bin/python -m pytest -ra -p no:cacheprovider "${@:-tests}"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests for: ${*:-tests}" >&2
  # No test selected is not a failure of the code under test; the whole suite always has tests.
  [ $# -gt 0 ] && exit 0
fi
exit $rc
