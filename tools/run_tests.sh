#!/usr/bin/env bash
# The one test command: the README's ("Set-up") and CI's (.ci/run execs this script). On a fresh Debian/Ubuntu
# machine it installs what the tests need and runs the whole suite:
#   1. the Debian packages the tests need (not on PyPI), where missing: DCMTK (dcmtk: the compressed-DICOM fixtures'
#      dcmcjpeg/dcmconv, and storescu/storescp/echoscu as real DICOM peers of the node tests) and the Orthanc PACS
#      (orthanc: /usr/sbin/Orthanc, run privately by tests/helpers/dicom_peers.py); python3-venv where `python3 -m
#      venv` cannot work. apt-get runs as root, through sudo when this user is not root. Orthanc's postinst cannot
#      start its service in a container; that is expected and harmless (the tests start their own instances);
#      Chromium (chromium: the headless browser that looks at the watcher's status page,
#      tests/watch/test_status_browser.py);
#   2. the virtual environment .venv with edgeseg installed editable with the `test` extra;
#   3. pytest (arguments given to this script are passed on to it; none: the whole suite).
# Its exit status is pytest's: 0 only when the tests passed and no test skipped for a reason outside EXPECTED_SKIPS
# of tests/conftest.py (the unexpected-skip gate; docs/testing.md). pytest's 5 (no tests collected) is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# -- 1. Debian packages -------------------------------------------------------------------------------------------
packages=()
if ! command -v dcmcjpeg >/dev/null 2>&1 || ! command -v storescp >/dev/null 2>&1 \
        || ! command -v echoscu >/dev/null 2>&1; then
    packages+=(dcmtk)
fi
if [ ! -x /usr/sbin/Orthanc ] && ! command -v Orthanc >/dev/null 2>&1; then
    packages+=(orthanc)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    packages+=(chromium)
fi
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    packages+=(python3-venv)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "run_tests.sh: the tests need the Debian packages ${packages[*]} and this system has no apt-get:" \
             "install their equivalents (DCMTK, Orthanc, Python's venv) and run this script again." >&2
        exit 1
    fi
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "run_tests.sh: installing ${packages[*]} needs root and sudo is not installed: as root run" \
                 "'apt-get update && apt-get install -y ${packages[*]}', then this script again." >&2
            exit 1
        fi
        as_root=(sudo)
    fi
    echo "run_tests.sh: installing the Debian packages ${packages[*]} (apt-get)" >&2
    ${as_root[@]+"${as_root[@]}"} apt-get update -qq
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# -- 2. the virtual environment with the test extra -----------------------------------------------------------------
python3 -m venv .venv
.venv/bin/pip install -q -e ".[test]"

# -- 3. the tests ---------------------------------------------------------------------------------------------------
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "run_tests.sh: pytest collected no tests (exit status 5): that is a failure, not a pass." \
         "Check the arguments given: $*" >&2
fi
exit "$status"
