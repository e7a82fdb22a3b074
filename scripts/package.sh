#!/usr/bin/env bash
# Builds the Debian package target/debian/pgrouter_<version>_<arch>.deb with dpkg-deb (no
# network, no cargo-deb): the binary, its man page and bash completion (generated from the
# command line), the systemd unit (Type=notify), the example config as a conffile in
# /etc/pgrouter, a `pgrouter` system user made by postinst, LICENSE, README and CHANGELOG.
#   scripts/package.sh                  builds the release binary, then the package
#   scripts/package.sh --binary PATH    packages the binary at PATH instead (the tests' build)
# The Maintainer field names who builds it, as dch and debmake find them: DEBFULLNAME and
# DEBEMAIL, else the checkout's `git config user.name` and `user.email`; without them it is a
# placeholder, said on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""
while (($#)); do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH]" >&2; exit 2 ;;
  esac
done
# Who the package says maintains it: dch's and debmake's variables (DEBEMAIL may be
# "Name <email>", as dch allows), then the checkout's git identity; checked before building.
placeholder="pgrouter developers <pgrouter@localhost>"
maintainer_name=${DEBFULLNAME:-}
maintainer_email=${DEBEMAIL:-}
if [[ $maintainer_email =~ ^(.*[^[:space:]])[[:space:]]*\<([^<>]*)\>$ ]]; then
  maintainer_name=${maintainer_name:-${BASH_REMATCH[1]}}
  maintainer_email=${BASH_REMATCH[2]}
fi
maintainer_name=${maintainer_name:-$(git config user.name 2>/dev/null || true)}
maintainer_email=${maintainer_email:-$(git config user.email 2>/dev/null || true)}
if [ -n "$maintainer_name" ] && [ -n "$maintainer_email" ]; then
  case "$maintainer_email" in
    *@*) ;;
    *) echo "package.sh: the maintainer's email '$maintainer_email' has no @ (DEBEMAIL, else git config user.email)" >&2; exit 2 ;;
  esac
  case "$maintainer_name$maintainer_email" in
    *[\<\>]* | *$'\n'*) echo "package.sh: '$maintainer_name' '$maintainer_email': no < > or line break in a name or email (DEBFULLNAME, DEBEMAIL, git's user.name, user.email)" >&2; exit 2 ;;
  esac
  maintainer="$maintainer_name <$maintainer_email>"
else
  maintainer=$placeholder
  echo "package.sh: WARNING: the package's Maintainer field is the placeholder '$placeholder'." >&2
  echo "package.sh: WARNING: set DEBFULLNAME=\"Your Name\" and DEBEMAIL=you@example.org (or git config user.name/user.email in this checkout) to name who builds it." >&2
fi
if [ -z "$binary" ]; then
  cargo build --release --bin pgrouter
  binary=${CARGO_TARGET_DIR:-target}/release/pgrouter
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
out=target/debian
stage=$out/pgrouter_${version}_${arch}
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/share/man/man1" \
  "$stage/usr/share/bash-completion/completions" "$stage/lib/systemd/system" \
  "$stage/etc/pgrouter" "$stage/usr/share/doc/pgrouter"

install -m 0755 "$binary" "$stage/usr/bin/pgrouter"
# Without its debug information, as Debian ships binaries (binutils' strip, from build-essential).
strip --strip-debug "$stage/usr/bin/pgrouter"
"$binary" man | gzip -9n > "$stage/usr/share/man/man1/pgrouter.1.gz"
"$binary" completion bash > "$stage/usr/share/bash-completion/completions/pgrouter"
sed 's#/usr/local/bin/pgrouter#/usr/bin/pgrouter#g' config/pgrouter.service \
  > "$stage/lib/systemd/system/pgrouter.service"
install -m 0640 config/pgrouter.toml "$stage/etc/pgrouter/pgrouter.toml"
install -m 0644 LICENSE "$stage/usr/share/doc/pgrouter/copyright"
install -m 0644 README.md "$stage/usr/share/doc/pgrouter/README.md"
gzip -9nc CHANGELOG.md > "$stage/usr/share/doc/pgrouter/changelog.gz"
chmod 0644 "$stage/usr/share/man/man1/pgrouter.1.gz" \
  "$stage/usr/share/bash-completion/completions/pgrouter" \
  "$stage/lib/systemd/system/pgrouter.service"

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: pgrouter
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: adduser, libc6
Section: database
Priority: optional
Description: PostgreSQL-aware router for Patroni clusters
 Routes clients to the member holding Patroni's leader key (writes) and to
 healthy, lag-bounded replicas (reads), from etcd or the members' REST APIs;
 holds clients through a switchover, pools connections, exports Prometheus
 metrics. Replaces HAProxy (and pgbouncer) in front of a Patroni cluster.
EOF
echo /etc/pgrouter/pgrouter.toml > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# The service runs as the pgrouter system user, who may read its config and nothing more.
set -e
if [ "$1" = configure ]; then
  if ! getent passwd pgrouter >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent --quiet pgrouter
  fi
  chown root:pgrouter /etc/pgrouter /etc/pgrouter/pgrouter.toml
  chmod 0750 /etc/pgrouter
  chmod 0640 /etc/pgrouter/pgrouter.toml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
  # Not enabled nor started: the example config names no real cluster. Edit it, then
  # `systemctl enable --now pgrouter`.
fi
exit 0
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop pgrouter.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
  # The conffile went with the purge; the directory goes when nothing an operator added
  # (certificates, the auth file) is left in it.
  rmdir --ignore-fail-on-non-empty /etc/pgrouter 2>/dev/null || true
  if getent passwd pgrouter >/dev/null; then
    deluser --system --quiet pgrouter >/dev/null 2>&1 || true
  fi
  if getent group pgrouter >/dev/null; then
    delgroup --system --quiet pgrouter >/dev/null 2>&1 || true
  fi
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

deb=$out/pgrouter_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
