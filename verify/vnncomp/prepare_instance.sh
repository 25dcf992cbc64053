#!/usr/bin/env bash
# VNN-COMP prepare script for Clarke (competition interface v1):
#
#   prepare_instance.sh v1 CATEGORY ONNX VNNLIB
#
# Checks the version string and that both files exist and are readable (gzip integrity for .gz files),
# and that the clarke command starts (which also warms the interpreter's file caches). Clarke needs no
# per-instance conversion and keeps no server running, so there is nothing to kill or to set up.
# Exit status 0 when the instance can be run, non-zero otherwise (with a one-line message on stderr).
#
# The clarke command is found by find_clarke (common.sh): $CLARKE, else `clarke` on PATH, else
# `${PYTHON:-python3} -m verify.cli.main` with this repository on PYTHONPATH.
set -u

usage() {
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2
    exit 2
}

[ "$#" -eq 4 ] || usage
VERSION=$1
CATEGORY=$2
ONNX=$3
VNNLIB=$4

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"
require_v1 prepare_instance.sh "$VERSION"
for f in "$ONNX" "$VNNLIB"; do
    if [ ! -f "$f" ] || [ ! -r "$f" ]; then
        echo "prepare_instance.sh: $f: no such readable file" >&2
        exit 2
    fi
    if [[ "$f" == *.gz ]] && ! gzip -t -- "$f" 2> /dev/null; then
        echo "prepare_instance.sh: $f: not a valid gzip file" >&2
        exit 2
    fi
done

find_clarke
if ! "${CMD[@]}" --version > /dev/null; then
    echo "prepare_instance.sh: cannot run the clarke command (${CMD[*]})" >&2
    exit 1
fi
echo "clarke: prepared category $CATEGORY, $(basename "$ONNX"), $(basename "$VNNLIB")" >&2
exit 0
