#!/usr/bin/env bash
# Installs a built imagekeeper .deb on this machine (as root) and checks what a
# user of a fresh Debian host relies on: the files, the service user owning the
# state directory, the version compiled in, the example policy validating, the man
# pages, and `systemd-analyze verify` on the installed unit. Then removes it.
#
#   bash packaging/deb/test-install.sh dist/imagekeeper_*.deb
set -euo pipefail
deb=$1
fail() { echo "package check FAILED: $*" >&2; exit 1; }

version=$(dpkg-deb --field "$deb" Version)
dpkg -i "$deb"
trap 'dpkg --purge imagekeeper >/dev/null 2>&1 || true' EXIT

for f in /usr/bin/imagekeeper /usr/lib/systemd/system/imagekeeper.service /usr/lib/sysusers.d/imagekeeper.conf \
  /etc/default/imagekeeper /etc/imagekeeper/imagekeeper.yaml /usr/share/man/man1/imagekeeper.1.gz \
  /usr/share/man/man1/imagekeeper-run.1.gz /usr/share/bash-completion/completions/imagekeeper \
  /usr/share/zsh/vendor-completions/_imagekeeper /usr/share/fish/vendor_completions.d/imagekeeper.fish \
  /usr/share/doc/imagekeeper/copyright /usr/share/doc/imagekeeper/changelog.gz /usr/share/doc/imagekeeper/operations.md; do
  [ -e "$f" ] || fail "$f is not installed"
done
dpkg -L imagekeeper | grep -qx /var/lib/imagekeeper || fail "/var/lib/imagekeeper is not in the package"

getent passwd imagekeeper >/dev/null || fail "no imagekeeper user"
[ "$(stat -c '%U:%G %a' /var/lib/imagekeeper)" = "imagekeeper:imagekeeper 750" ] ||
  fail "/var/lib/imagekeeper is $(stat -c '%U:%G %a' /var/lib/imagekeeper), want imagekeeper:imagekeeper 750"
[ "$(stat -c '%U:%G %a' /etc/imagekeeper/imagekeeper.yaml)" = "root:imagekeeper 640" ] ||
  fail "/etc/imagekeeper/imagekeeper.yaml is $(stat -c '%U:%G %a' /etc/imagekeeper/imagekeeper.yaml)"
grep -q '^ExecStart=/usr/bin/imagekeeper daemon ' /usr/lib/systemd/system/imagekeeper.service ||
  fail "the installed unit does not start /usr/bin/imagekeeper"

got=$(/usr/bin/imagekeeper version)
case "$got" in
  "imagekeeper $version (revision "*) ;;
  *) fail "imagekeeper version says '$got', want version $version" ;;
esac
/usr/bin/imagekeeper validate --config /etc/imagekeeper/imagekeeper.yaml >/dev/null ||
  fail "the example policy does not validate"
# The service user can read its policy file and write its state directory.
runuser -u imagekeeper -- /usr/bin/imagekeeper validate >/dev/null || fail "imagekeeper cannot read its policy file"
runuser -u imagekeeper -- /usr/bin/imagekeeper status --state /var/lib/imagekeeper/lineage.db >/dev/null ||
  fail "imagekeeper cannot open a lineage in /var/lib/imagekeeper"
if command -v man >/dev/null; then
  man -l /usr/share/man/man1/imagekeeper-run.1.gz 2>/dev/null | grep -q -- '--policy' || fail "man imagekeeper-run lacks --policy"
fi
systemd-analyze verify /usr/lib/systemd/system/imagekeeper.service || fail "systemd-analyze verify"

dpkg -r imagekeeper >/dev/null
[ ! -e /usr/bin/imagekeeper ] || fail "dpkg -r left /usr/bin/imagekeeper"
[ -d /var/lib/imagekeeper ] || fail "dpkg -r removed the lineage directory"
echo "package $deb: installed, checked and removed"
