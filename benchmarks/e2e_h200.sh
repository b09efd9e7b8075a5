#!/usr/bin/env bash
# The end-to-end sweep of docs/paper-figure5.md on one H200: llama3-8b shapes, batch 5 (the paper's),
# N = 4k..128k; FlashAttention-2 (the paper's baseline) and -3 (the fastest exact kernel here),
# tensorized m = 2, 3 and simple-gla. One decoder layer; the model (embedding, one layer, final norm;
# its 32-layer time is estimated from it); the estimate checked once, at 4k, against all 32 layers.
# With --extras, instead, what the figure adds with the same shapes and methods: the attention alone
# (its share of the layer) and the paper's protocol (the mean of 50 forward passes) at layer scope
# up to 16k, beside tbench's own sampling.
# Short sampling (3 samples, <= 1 s each). Configurations that cannot fit are stored as `skipped`.
# Usage: benchmarks/e2e_h200.sh [--extras] [DB]
#   (default e2e-h200.db, or e2e-extras-h200.db with --extras; the runs are exported to DB.json.gz)
set -euo pipefail
EXTRAS=false
if [ "${1:-}" = "--extras" ]; then EXTRAS=true; shift; fi
if $EXTRAS; then DB=${1:-e2e-extras-h200.db}; else DB=${1:-e2e-h200.db}; fi
if [ -e "$DB" ]; then echo "e2e_h200.sh: $DB exists; give a new file" >&2; exit 2; fi
COMMON=(--preset llama3-8b --batch 5 --methods flash2,flash3,tensorized,simple-gla --orders 2,3
        --min-samples 3 --min-time 0 --budget 1 --quiet --db "$DB")
start=$SECONDS
runs=0
step() {  # a run, and how long it took
  local began=$SECONDS
  tbench run "${COMMON[@]}" "$@"
  runs=$((runs + 1))
  echo "e2e_h200.sh: $* took $((SECONDS - began)) s" >&2
}
if $EXTRAS; then
  step --scope op --lengths 4k..128k
  step --scope layer --lengths 4k..16k --protocol paper
else
  step --scope layer --lengths 4k..128k
  step --scope model --layers 1 --lengths 4k..128k
  step --scope model --layers 32 --lengths 4k
fi
echo "sweep took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
tbench export $(seq 1 "$runs") --out "$DB.json.gz" --db "$DB"   # the runs above, in a fresh store
