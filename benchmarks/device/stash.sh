#!/usr/bin/env bash
# On the device, one call per part: keep the carried rehearsal part(s) in /tmp (it survives between calls
# while the machine stays warm, ~30 s after each call).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /tmp/rehearsal_parts
cp .device/rehearsal/rehearsal.* /tmp/rehearsal_parts/ 2>/dev/null || true
ls -l /tmp/rehearsal_parts
