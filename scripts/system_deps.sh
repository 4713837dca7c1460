#!/usr/bin/env bash
# System packages the tests use beyond PyPI (installed when missing and we are root).
set -euo pipefail
need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)  # real-Redis Feast test
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || echo "system_deps: could not install ${need[*]} (tests that need them will skip; with CI set they fail)" >&2
  else
    echo "system_deps: missing ${need[*]} (not root: tests that need them will skip; with CI set they fail)" >&2
  fi
fi
