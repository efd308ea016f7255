#!/usr/bin/env bash
# The main job: set up, run the seed experiment of d2l §9.1, then sample from the model.
# Each run gets its own directory: runs/seed, then runs/seed-2, runs/seed-3 … (a run is never
# replaced; `grulm train` refuses a directory that holds one).
source "$(dirname "$0")/venv.sh"
out=runs/seed
n=1
while [ -e "$out" ]; do
  n=$((n + 1))
  out="runs/seed-$n"
done
grulm train --out "$out" "$@"
grulm generate "$out" --prefix "time traveller" --num-preds 100
