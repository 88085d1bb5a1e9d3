#!/usr/bin/env bash
# Builds the Debian package of imagekeeper with Debian's own dpkg-deb: no packaging
# tool beyond dpkg, so that CI and an ops host build it the same way.
#
#   bash packaging/deb/build.sh [OUTDIR]      # default OUTDIR: ./dist
#
# VERSION (default: the newest version in CHANGELOG.md, plus +git.REV when HEAD is
# not that version's tag) and REVISION (default: git rev-parse HEAD) are compiled in
# with -ldflags, so `imagekeeper version` reports what the package says.
#
# The package installs:
#   /usr/bin/imagekeeper
#   /usr/lib/systemd/system/imagekeeper.service      (ExecStart=/usr/bin/imagekeeper)
#   /usr/lib/sysusers.d/imagekeeper.conf             (the imagekeeper user and group)
#   /etc/default/imagekeeper                         (conffile: OS_CLOUD, OS_CLIENT_CONFIG_FILE)
#   /etc/imagekeeper/imagekeeper.yaml                (conffile: examples/daily.yaml, to edit)
#   /var/lib/imagekeeper                             (0750, owned by imagekeeper, made by postinst)
#   /usr/share/man/man1/imagekeeper*.1.gz            (imagekeeper man)
#   /usr/share/bash-completion/completions/imagekeeper, zsh and fish completions
#   /usr/share/doc/imagekeeper/                      (copyright, changelog, README, operations guide, examples)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

rev=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
base=$(sed -n 's/^## \[\([0-9][^]]*\)\].*/\1/p' CHANGELOG.md | head -n 1)
if [ -z "${VERSION:-}" ]; then
  VERSION=$base
  if ! git describe --exact-match --tags HEAD >/dev/null 2>&1; then
    VERSION="$base+git.${rev:0:12}"
  fi
fi
arch=$(dpkg --print-architecture)
goarch=$(go env GOARCH)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
pkg="$root/imagekeeper"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/systemd/system" "$pkg/usr/lib/sysusers.d" \
  "$pkg/etc/default" "$pkg/etc/imagekeeper" "$pkg/var/lib/imagekeeper" "$pkg/usr/share/man/man1" \
  "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d" "$pkg/usr/share/doc/imagekeeper/examples"

echo "building imagekeeper $VERSION ($rev) for $arch"
CGO_ENABLED=1 GOARCH=$goarch go build -buildvcs=false \
  -ldflags "-s -w -X main.version=$VERSION -X main.revision=$rev" \
  -o "$pkg/usr/bin/imagekeeper" ./cmd/imagekeeper
bin="$pkg/usr/bin/imagekeeper"

sed 's#^ExecStart=/usr/local/bin/imagekeeper #ExecStart=/usr/bin/imagekeeper #' systemd/imagekeeper.service \
  > "$pkg/usr/lib/systemd/system/imagekeeper.service"
grep -q '^ExecStart=/usr/bin/imagekeeper ' "$pkg/usr/lib/systemd/system/imagekeeper.service"
install -m 0644 systemd/imagekeeper.sysusers "$pkg/usr/lib/sysusers.d/imagekeeper.conf"
install -m 0644 systemd/imagekeeper.default "$pkg/etc/default/imagekeeper"
install -m 0640 examples/daily.yaml "$pkg/etc/imagekeeper/imagekeeper.yaml"

"$bin" man --dir "$root/man" >/dev/null
for page in "$root"/man/*.1; do
  gzip -9n < "$page" > "$pkg/usr/share/man/man1/$(basename "$page").gz"
done
"$bin" completion bash > "$pkg/usr/share/bash-completion/completions/imagekeeper"
"$bin" completion zsh > "$pkg/usr/share/zsh/vendor-completions/_imagekeeper"
"$bin" completion fish > "$pkg/usr/share/fish/vendor_completions.d/imagekeeper.fish"

doc="$pkg/usr/share/doc/imagekeeper"
{
  echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: imagekeeper"
  echo
  echo "Files: *"
  echo "License: Apache-2.0"
  echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
} > "$doc/copyright"
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
install -m 0644 README.md docs/operations.md "$doc/"
install -m 0644 examples/*.yaml "$doc/examples/"
install -d "$doc/examples/prometheus" "$doc/examples/grafana"
install -m 0644 examples/prometheus/alerts.yml "$doc/examples/prometheus/"
install -m 0644 examples/grafana/imagekeeper.json "$doc/examples/grafana/"

cat > "$pkg/DEBIAN/control" <<CONTROL
Package: imagekeeper
Version: $VERSION
Architecture: $arch
Maintainer: imagekeeper maintainers <maintainers@imagekeeper.invalid>
Depends: libc6, systemd | systemd-sysusers | adduser
Section: admin
Priority: optional
Installed-Size: $(du -sk "$pkg" | cut -f1)
Homepage: https://github.com/imagekeeper/imagekeeper
Description: point-in-time images of OpenStack servers, on schedule, with retention
 imagekeeper reads YAML policies, images the servers they select on each
 policy's schedule (Nova createImage, and the Cinder snapshots of
 volume-backed servers), records the lineage in SQLite, and prunes old images
 with the volume snapshots behind them. The daemon runs as a systemd service;
 the command line talks to it over a local control socket.
CONTROL
printf '/etc/default/imagekeeper\n/etc/imagekeeper/imagekeeper.yaml\n' > "$pkg/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$pkg/DEBIAN/"

file="$out/imagekeeper_${VERSION}_${arch}.deb"
dpkg-deb --root-owner-group --build "$pkg" "$file" >/dev/null
echo "$file"
