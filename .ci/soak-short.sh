#!/usr/bin/env bash
# Short crash-and-fault soak (issue 8, DESIGN.md section 10), called from .ci/run.
# It builds imagekeeper, runs `imagekeeper simcloud` and `imagekeeper daemon` as
# separate processes on loopback for ~105 s with 10 seeded kill -9s and injected
# faults, then checks the simulator's state and the lineage. It takes 3-4 minutes on
# 2 cores and prints one machine-readable last line:
#   soak: slots=.. kills=.. faults=.. images=.. duplicates=0 untracked=0 leftovers=0 wrong_deletions=0 ...
# Exit 1 on any invariant violation, 2 when the soak could not run.
#
# Environment: SOAK_SEED (default 8; a failure prints its seed, rerun with it),
# SOAK_KNOWN (violation kinds that are known bugs, reported but not failing; empty by
# default), SOAK_WORKDIR (kept for inspection; default a temp dir removed on success).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1
work="${SOAK_WORKDIR:-$(mktemp -d /tmp/imagekeeper-soak.XXXXXX)}"
mkdir -p "$work"
go build -o "$work/imagekeeper" ./cmd/imagekeeper
go build -o "$work/imagekeeper-soak" ./cmd/imagekeeper-soak
status=0
timeout 330 "$work/imagekeeper-soak" -mode short -bin "$work/imagekeeper" -workdir "$work/run" \
  -seed "${SOAK_SEED:-8}" -known "${SOAK_KNOWN:-}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "soak failed (exit $status); last lines of the daemon log:" >&2
  tail -n 40 "$work/run/daemon.log" >&2 || true
  exit "$status"
fi
[ -n "${SOAK_WORKDIR:-}" ] || rm -rf "$work"
