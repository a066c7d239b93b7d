#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages, only when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# `apt-get update` at most once per run, before the first install that needs it.
apt_update_once() {
    if [ -z "${_APT_UPDATED:-}" ]; then
        apt-get update -qq
        _APT_UPDATED=1
    fi
}

# Azurite (Azure Storage emulator) for the Azure tests, from the npm registry into an ignored
# folder; the version is pinned in src/hafen/testing/_azurite.py (AZURITE_VERSION).
AZURITE_VERSION=3.35.0
if ! grep -qs "\"version\": \"${AZURITE_VERSION}\"" .cache/azurite/node_modules/azurite/package.json; then
    command -v npm >/dev/null || { echo "npm is required for Azurite (apt-get install nodejs npm)" >&2; exit 1; }
    mkdir -p .cache/azurite
    npm install --no-audit --no-fund --prefix .cache/azurite "azurite@${AZURITE_VERSION}"
fi

# PostgreSQL server binaries for the SQL tests (hafen.testing.PostgresServer starts a throwaway
# server from /usr/lib/postgresql/*/bin as an unprivileged user).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { echo "PostgreSQL server binaries are required (/usr/lib/postgresql/*/bin)" >&2; exit 1; }
    apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# Chromium for the real-browser test of the API's page (tests/serve/test_browser.py), from
# Debian's packages: no browser download at run time.
if ! command -v chromium >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { echo "chromium is required (Debian package chromium)" >&2; exit 1; }
    apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "test dependencies ready"
