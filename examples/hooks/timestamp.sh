#!/bin/sh
# An example image.hooks command for imagekeeper: it records when it ran, for
# which server and slot, and (post only) what became of the image. A real hook
# freezes or flushes the application instead, e.g. over SSH:
#   ssh -o BatchMode=yes "root@$IMAGEKEEPER_SERVER_NAME" fsfreeze --freeze /var/lib/postgresql
# imagekeeper runs it with no shell in between, a clean environment (PATH and the
# IMAGEKEEPER_* variables only), in its own process group that is killed at the
# hook's timeout; stdout and stderr (8 KiB each) go into the lineage's events.
#
# Usage: timestamp.sh pre|post FILE
set -eu
phase=${1:?usage: timestamp.sh pre|post FILE}
file=${2:?usage: timestamp.sh pre|post FILE}
printf '%s %s server=%s (%s) policy=%s slot=%s image=%s result=%s\n' \
	"$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" "$phase" \
	"${IMAGEKEEPER_SERVER_NAME:-}" "${IMAGEKEEPER_SERVER_ID:-}" "${IMAGEKEEPER_POLICY:-}" \
	"${IMAGEKEEPER_SLOT:-}" "${IMAGEKEEPER_IMAGE_ID:--}" "${IMAGEKEEPER_RESULT:--}" >> "$file"
echo "$phase recorded in $file"
