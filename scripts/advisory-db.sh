#!/usr/bin/env bash
# Puts the RustSec advisory database snapshot at ../shared/advisory-db (beside the checkout;
# refreshed from outside now and then, its SNAPSHOT file naming the commit and date) where
# `cargo deny --offline check advisories` opens it: deny.toml's db-path, target/advisory-db,
# under the directory name cargo-deny gives the default database URL. Copied, because the
# snapshot is read-only and cargo-deny locks and reads its database as a git checkout.
# Nothing is fetched. Prints the snapshot used.
set -euo pipefail
cd "$(dirname "$0")/.."

# The snapshot beside the checkout; PGROUTER_ADVISORY_DB names another. Exit status 2 when
# there is none (a machine without the shared folder): the caller skips the advisory check
# and says so, rather than failing every other check with it.
src=${PGROUTER_ADVISORY_DB:-../shared/advisory-db}
if [ -z "${PGROUTER_ADVISORY_DB:-}" ] && [ ! -f "$src/SNAPSHOT" ] && [ -f /work/shared/advisory-db/SNAPSHOT ]; then
  src=/work/shared/advisory-db
fi
# cargo-deny's name for https://github.com/RustSec/advisory-db (url_to_db_path: the URL's last
# segment and its XxHash64). If a cargo-deny upgrade changes it, the check fails naming the
# path it looked for: put that name here.
dest=target/advisory-db/advisory-db-3157b0e258782691

[ -e "$src" ] || {
  echo "advisory-db: no RustSec snapshot at $src" >&2
  exit 2
}
[ -f "$src/SNAPSHOT" ] && [ -d "$src/crates" ] || {
  echo "advisory-db: $src is not a RustSec snapshot (SNAPSHOT and crates/ expected)" >&2
  exit 1
}
if ! cmp -s "$src/SNAPSHOT" "$dest/SNAPSHOT"; then
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  cp -R "$src" "$dest"
  chmod -R u+w "$dest"
  # cargo-deny dates a database by .git/FETCH_HEAD: the snapshot's own date, so
  # `maximum-db-staleness` in deny.toml measures the snapshot's age, not the copy's.
  read -r commit date < <(sed -n 's/.*commit \([0-9a-f]\{40\}\), \([0-9-]\{10\}\).*/\1 \2/p' "$src/SNAPSHOT")
  [ -n "${commit:-}" ] && [ -n "${date:-}" ] || {
    echo "advisory-db: cannot read the commit and date from $src/SNAPSHOT: $(cat "$src/SNAPSHOT")" >&2
    exit 1
  }
  mkdir -p "$dest/.git"
  printf '%s\t\tbranch '"'"'main'"'"' of https://github.com/RustSec/advisory-db\n' "$commit" >"$dest/.git/FETCH_HEAD"
  touch -d "$date" "$dest/.git/FETCH_HEAD"
fi
echo "advisory-db: $(cat "$dest/SNAPSHOT")"
