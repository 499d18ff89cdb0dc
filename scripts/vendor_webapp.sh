#!/usr/bin/env bash
# Re-vendor the web app's browser libraries from the npm registry (pinned versions below) into
# services/gateway/webapp/static/vendor/, with their licenses and a SHA256SUMS file that
# tests/webapp/test_vendor.py checks. Needs npm only here; the app itself needs no Node.js.
set -euo pipefail
cd "$(dirname "$0")/.."

PREACT=10.29.8
HTM=3.1.1
MARKED=18.2.1
DOMPURIFY=3.5.0
UPLOT=1.6.32

dest=services/gateway/webapp/static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    "preact@$PREACT" "htm@$HTM" "marked@$MARKED" "dompurify@$DOMPURIFY" "uplot@$UPLOT")
m="$tmp/node_modules"

rm -rf "$dest" && mkdir -p "$dest/licenses"
cp "$m/preact/dist/preact.module.js" "$dest/preact.module.js"
# The hooks import the bare specifier "preact"; a relative path needs no import map (an inline
# script the Content-Security-Policy would have to allow).
sed 's#from"preact"#from"./preact.module.js"#' "$m/preact/hooks/dist/hooks.module.js" \
    > "$dest/preact-hooks.module.js"
cp "$m/htm/dist/htm.module.js" "$dest/htm.module.js"
cp "$m/marked/lib/marked.esm.js" "$dest/marked.esm.js"
cp "$m/dompurify/dist/purify.es.mjs" "$dest/purify.es.mjs"
cp "$m/uplot/dist/uPlot.esm.js" "$dest/uPlot.esm.js"
cp "$m/uplot/dist/uPlot.min.css" "$dest/uPlot.min.css"
for pkg in preact htm marked dompurify uplot; do
    cp "$m/$pkg/LICENSE" "$dest/licenses/$pkg.LICENSE"
done
cp "$m/dompurify/LICENSE-MPL" "$dest/licenses/dompurify.LICENSE-MPL"

cat > "$dest/VERSIONS" <<VERSIONS
preact $PREACT MIT
htm $HTM Apache-2.0
marked $MARKED MIT
dompurify $DOMPURIFY MPL-2.0 OR Apache-2.0
uplot $UPLOT MIT
VERSIONS
(cd "$dest" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
echo "vendored into $dest:"
cat "$dest/VERSIONS"
