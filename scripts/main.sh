#!/usr/bin/env bash
# The main job: set up, run the seed experiment of d2l §9.1, then sample from the model.
source "$(dirname "$0")/venv.sh"
grulm train --out runs/seed "$@"
grulm generate runs/seed --prefix "time traveller" --num-preds 100
