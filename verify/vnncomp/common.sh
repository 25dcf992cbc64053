# Shared by prepare_instance.sh and run_instance.sh (sourced, not run).

# require_v1 SCRIPT VERSION: exit 2 unless the competition interface version string is v1.
require_v1() {
    if [ "$2" != "v1" ]; then
        echo "$1: expected version string v1, got '$2'" >&2
        exit 2
    fi
}

# find_clarke: sets the array CMD to the clarke command: $CLARKE when set (e.g. CLARKE="/opt/venv/bin/clarke"),
# else `clarke` on PATH, else `${PYTHON:-python3} -m verify.cli.main` with this repository on PYTHONPATH.
find_clarke() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if [ -n "${CLARKE:-}" ]; then
        read -r -a CMD <<< "$CLARKE"
    elif command -v clarke > /dev/null 2>&1; then
        CMD=(clarke)
    else
        CMD=("${PYTHON:-python3}" -m verify.cli.main)
        export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    fi
}
