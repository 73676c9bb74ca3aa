#!/usr/bin/env bash
# Prints the path of a `prometheus` binary, installing Debian's package when there
# is none (the dashboard test runs its own Prometheus against a real exporter).
# The packaged service is never started: a policy-rc.d refuses it during the
# install.
#
# Usage: prometheus=$(scripts/prometheus-env.sh | tail -n 1)
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1; then
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  {
    apt-get install -y --no-install-recommends prometheus \
      || { apt-get update && apt-get install -y --no-install-recommends prometheus; }
  } >&2
fi
command -v prometheus
