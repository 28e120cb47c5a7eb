#!/usr/bin/env bash
# Refreshes the vendored Designsystemet files under assets/vendor/ from the npm registry:
# the CSS (@digdir/designsystemet-css) and the Digdir theme (@digdir/designsystemet-theme),
# with their licences. Run from anywhere; needs npm. Then rebuild: the binary embeds them.
#   assets/refresh.sh          # the newest releases
#   assets/refresh.sh 1.22.0 1.11.0   # given versions of the CSS and the theme
set -euo pipefail
cd "$(dirname "$0")/.."
css_version="${1:-latest}"
theme_version="${2:-latest}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund --ignore-scripts \
  "@digdir/designsystemet-css@${css_version}" "@digdir/designsystemet-theme@${theme_version}" >/dev/null)
css="$work/node_modules/@digdir/designsystemet-css"
theme="$work/node_modules/@digdir/designsystemet-theme"
mkdir -p assets/vendor/designsystemet-css assets/vendor/designsystemet-theme
cp "$css/dist/src/index.css" assets/vendor/designsystemet-css/index.css
cp "$css/LICENSE" assets/vendor/designsystemet-css/LICENSE
cp "$theme/brand/digdir.css" assets/vendor/designsystemet-theme/digdir.css
cp "$theme/LICENSE" assets/vendor/designsystemet-theme/LICENSE
# No page may load anything from another host: refuse a release whose CSS does.
if grep -Eo 'url\((["'"'"']?)(https?:)?//' assets/vendor/designsystemet-*/*.css; then
  echo "a vendored CSS file loads from another host; not accepted" >&2
  exit 1
fi
printf 'designsystemet-css %s, designsystemet-theme %s\n' \
  "$(node -p "require('$css/package.json').version")" \
  "$(node -p "require('$theme/package.json').version")" | tee assets/vendor/VERSIONS
