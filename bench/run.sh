#!/bin/sh
# One command for the side-by-side comparison and the report (see bench/README.md).
#   bench/run.sh [HARNESS_DIR] [bench.py options...]
# HARNESS_DIR: a built copy of ../shared/bench (make, npm ci in node-seed, nginx-light +
# libnginx-mod-nchan installed). Default: $SENTRI_BENCH_HARNESS.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
harness=${SENTRI_BENCH_HARNESS:-}
if [ $# -gt 0 ] && [ -d "$1" ]; then harness=$1; shift; fi
[ -n "$harness" ] || { echo "usage: bench/run.sh HARNESS_DIR [bench.py options]" >&2; exit 2; }
export SENTRI_PYTHON=${SENTRI_PYTHON:-$(command -v python)}
secret=$(sed -n 's/.*"JWT_SECRET": "\([^"]*\)".*/\1/p' "$here/peer.json")
token=$(JWT_SECRET=$secret DATABASE_URL=sqlite:///:memory: "$SENTRI_PYTHON" "$here/serve_bench.py" --token)
stamp=$(date +%Y%m%d-%H%M%S)
out=${SENTRI_BENCH_OUT:-$here/results}
mkdir -p "$out"
cd "$harness"
python3 bench.py --token "$token" --json "$out/bench-$stamp.json" --markdown "$out/bench-$stamp.md" "$@"
# The harness records its argv (the token included) in the JSON: keep the token out of results.
sed -i "s/$token/<bench token>/g" "$out/bench-$stamp.json"
"$SENTRI_PYTHON" "$here/report.py" "$out/bench-$stamp.json" --out "$out/report-$stamp"
