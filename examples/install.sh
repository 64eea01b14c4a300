#!/usr/bin/env bash
# Install what the example tests (tests/test_examples.py) need: Debian's Chromium and the npm packages of
# examples/node and examples/web, exactly as their package-lock.json files pin them. Safe to run again.
#
#   bash examples/install.sh            (as root, or with sudo available for apt-get)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# onnxruntime-node's install script would download the CUDA provider from nuget.org; the CPU build the examples use
# ships inside the npm package, so skip that download (it fails on machines that only reach the npm registry).
export ONNXRUNTIME_NODE_INSTALL=skip
for example in node web; do
  (cd "$here/$example" && npm ci --no-audit --no-fund --loglevel=error)
done

echo "examples ready: $(chromium --version 2>/dev/null | head -1), node $(node --version)"
