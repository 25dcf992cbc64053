#!/usr/bin/env bash
# VNN-COMP run script for Clarke (competition interface v1):
#
#   run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT_FILE TIMEOUT
#
# Runs `clarke verify ONNX VNNLIB --timeout TIMEOUT --result-file RESULT_FILE`. Clarke answers before
# TIMEOUT seconds (it stops its search with a margin) and writes RESULT_FILE atomically: the status line
# (sat / unsat / timeout / unknown) and, for sat, the counterexample it re-checked with onnxruntime.
# Compressed inputs (.onnx.gz, .vnnlib.gz) are read directly by Clarke's loaders.
# Exit status: 0 when a result file was written; non-zero on bad input or any other failure, in which
# case no result file is left behind (a stale one from an earlier run is removed first).
#
# The clarke command: $CLARKE when set (e.g. CLARKE="/opt/venv/bin/clarke"), else `clarke` on PATH, else
# `${PYTHON:-python3} -m verify.cli.main` with this repository on PYTHONPATH.
set -u

usage() {
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULT_FILE TIMEOUT" >&2
    exit 2
}

[ "$#" -eq 6 ] || usage
VERSION=$1
CATEGORY=$2
ONNX=$3
VNNLIB=$4
RESULT_FILE=$5
TIMEOUT=$6

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"
require_v1 run_instance.sh "$VERSION"
if ! [[ "$TIMEOUT" =~ ^([0-9]+([.][0-9]*)?|[.][0-9]+)$ ]]; then
    echo "run_instance.sh: TIMEOUT must be a positive number of seconds, got '$TIMEOUT'" >&2
    exit 2
fi
for f in "$ONNX" "$VNNLIB"; do
    if [ ! -f "$f" ]; then
        echo "run_instance.sh: $f: no such file" >&2
        exit 2
    fi
done

find_clarke

rm -f -- "$RESULT_FILE"

echo "clarke: category $CATEGORY, $(basename "$ONNX"), $(basename "$VNNLIB"), timeout $TIMEOUT s" >&2
"${CMD[@]}" verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --result-file "$RESULT_FILE"
rc=$?
if [ "$rc" -ne 0 ]; then
    rm -f -- "$RESULT_FILE"
    exit "$rc"
fi
if [ ! -s "$RESULT_FILE" ]; then
    echo "run_instance.sh: clarke wrote no result file" >&2
    exit 1
fi
exit 0
