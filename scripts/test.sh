#!/usr/bin/env bash
# The whole test suite (slow end-to-end tests included) and the linter.
source "$(dirname "$0")/venv.sh" test
ruff check src tests benchmarks
python -m pytest -q "$@"
