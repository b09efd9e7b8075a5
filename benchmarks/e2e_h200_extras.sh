#!/usr/bin/env bash
# What docs/paper-figure5.md adds to the end-to-end sweep (benchmarks/e2e_h200.sh), on one H200 with
# the same shapes and methods: the attention alone at batch 5 (the share of the layer's time it
# takes), and the paper's protocol (one sample = the mean of 50 forward passes) at layer scope up
# to 16k, beside tbench's own sampling.
# Usage: benchmarks/e2e_h200_extras.sh [DB]   (default e2e-extras-h200.db; exported to DB.json.gz)
set -euo pipefail
DB=${1:-e2e-extras-h200.db}
if [ -e "$DB" ]; then echo "e2e_h200_extras.sh: $DB exists; give a new file" >&2; exit 2; fi
COMMON=(--preset llama3-8b --batch 5 --methods flash2,flash3,tensorized,simple-gla --orders 2,3
        --min-samples 3 --min-time 0 --budget 1 --quiet --db "$DB")
start=$SECONDS
step() {  # a run, and how long it took
  local began=$SECONDS
  tbench run "${COMMON[@]}" "$@"
  echo "e2e_h200_extras.sh: $* took $((SECONDS - began)) s" >&2
}
step --scope op --lengths 4k..128k
step --scope layer --lengths 4k..16k --protocol paper
echo "extras took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
tbench export 1 2 --out "$DB.json.gz" --db "$DB"   # the two runs above, in a fresh store
