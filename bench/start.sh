#!/bin/sh
# Start one Sentri process for the side-by-side harness (bench.py runs this from peer*.json).
# SENTRI_PYTHON: the Python that has sentri installed (bench/run.sh sets it); default python3.
exec "${SENTRI_PYTHON:-python3}" "$(dirname "$0")/serve_bench.py" "$@"
