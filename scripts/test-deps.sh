#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages, only when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Azurite (Azure Storage emulator) for the Azure tests, from the npm registry into an ignored
# folder; the version is pinned in tests/datasets/_azurite.py (AZURITE_VERSION).
AZURITE_VERSION=3.37.0
if [ ! -f .cache/azurite/node_modules/azurite/dist/src/blob/main.js ]; then
    command -v npm >/dev/null || { echo "npm is required for Azurite (apt-get install nodejs npm)" >&2; exit 1; }
    mkdir -p .cache/azurite
    npm install --no-audit --no-fund --prefix .cache/azurite "azurite@${AZURITE_VERSION}"
fi

# PostgreSQL server binaries for the SQL tests (tests/sql/conftest.py starts a throwaway server
# from /usr/lib/postgresql/*/bin as an unprivileged user).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { echo "PostgreSQL server binaries are required (/usr/lib/postgresql/*/bin)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

echo "test dependencies ready"
