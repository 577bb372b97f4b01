#!/usr/bin/env bash
# Audit pinned dependencies for known vulnerabilities with pip-audit.
#
#   tools/audit.sh [requirements.txt ...]     (default: requirements.txt requirements-clip.txt)
#
# Exit codes: 0 = no known vulnerabilities, or the audit was SKIPPED because the vulnerability
# database could not be reached (offline CI, air-gapped build host): a clear message says so;
# 1 = vulnerabilities found; 2 = pip-audit itself is missing or failed for another reason.
#
# --no-deps --disable-pip: audit exactly the pinned versions without resolving or installing
# anything (fast, no virtualenv, no build of sdists). Transitive dependencies are covered by
# auditing the installed environment in CI (pip-audit without -r) if wanted.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(requirements.txt)
    [ -f requirements-clip.txt ] && files+=(requirements-clip.txt)
fi

if ! command -v pip-audit >/dev/null 2>&1 && ! python -m pip_audit --version >/dev/null 2>&1; then
    echo "audit: pip-audit is not installed (pip install pip-audit)" >&2
    exit 2
fi
run_audit() {
    if command -v pip-audit >/dev/null 2>&1; then pip-audit "$@"; else python -m pip_audit "$@"; fi
}

args=()
for f in "${files[@]}"; do
    [ -f "$f" ] || { echo "audit: $f not found" >&2; exit 2; }
    args+=(-r "$f")
done

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
run_audit "${args[@]}" --no-deps --disable-pip --progress-spinner off --timeout 20 >"$out" 2>&1
status=$?
skipped_msg="audit: SKIPPED - the vulnerability database (PyPI / OSV) could not be reached; rerun with network access"

# Network trouble is not a finding: skip with a clear message instead of failing the build
# (and without pip-audit's traceback, which would look like a crash in the CI log).
if [ $status -ne 0 ] && grep -qiE "ConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|ProxyError|NameResolutionError|Name or service not known|Temporary failure in name resolution|Network is unreachable|Connection refused|ServiceError|SSLError|timed out" "$out"; then
    grep -E "^[A-Za-z.]+(Error|Exception):" "$out" | tail -1 >&2
    echo "$skipped_msg" >&2
    exit 0
fi
grep -vE "^WARNING:pip_audit._cli:(--no-deps|Consider using)" "$out"
if [ $status -ne 0 ]; then
    if grep -qiE "Found [0-9]+ known vulnerabilit" "$out"; then
        echo "audit: vulnerabilities found (see above)" >&2
        exit 1
    fi
    echo "audit: pip-audit failed (exit $status)" >&2
    exit 2
fi
# A mirror without PyPI's JSON API answers 404 for every package: pip-audit then reports
# "could not be audited" and exits 0. That is not a clean bill of health.
unaudited=$(grep -c "could not be audited" "$out" || true)
total=$(cat "${files[@]}" | sed 's/#.*//' | grep -cE '^[[:space:]]*[A-Za-z0-9]' || true)
if [ "${unaudited:-0}" -gt 0 ]; then
    if [ "$unaudited" -ge "$total" ]; then
        echo "$skipped_msg (no package could be looked up: is this a PyPI mirror without the JSON API?)" >&2
        exit 0
    fi
    echo "audit: no known vulnerabilities in the packages that could be looked up; $unaudited of $total could not be audited (listed above)" >&2
    exit 0
fi
echo "audit: no known vulnerabilities in ${files[*]}"
exit 0
