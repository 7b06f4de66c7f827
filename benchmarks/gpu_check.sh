#!/usr/bin/env bash
# The prepared GPU check of issue 18, from the repository root on the device machine (or anywhere, with --dry-run):
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--wheels DIR] [--budget SECONDS]
# Writes DIR (default $OUT, else a new temporary directory)/gpu_report.json, gpu_check.log and cuda_tests.xml.
# The Python is the machine's own python3 (the one holding the preinstalled torch); FR_GPU_CHECK_PYTHON overrides.
set -u
cd "$(dirname "$0")/.." || exit 2
exec "${FR_GPU_CHECK_PYTHON:-python3}" benchmarks/gpu_check.py "$@"
