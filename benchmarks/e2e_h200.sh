#!/usr/bin/env bash
# The end-to-end sweep of docs/paper-figure5.md on one H200: llama3-8b shapes, N = 4k..128k,
# FlashAttention-2 and -3, cuDNN SDPA, tensorized m = 2, 3 and simple-gla, at op, layer and model
# scope. Aimed at 10 minutes or less (not yet measured): short sampling (3 samples, <= 1 s each),
# batch 5 everywhere and batch 1 at op and layer scope, model scope with 2 layers (the depth of 32
# is estimated from them and checked once, at 4k), the paper's protocol (the mean of 50 forward
# passes) at layer scope up to 32k. Configurations that cannot fit are stored as `skipped`.
# Usage: benchmarks/e2e_h200.sh [DB]   (default e2e-h200.db; the runs are exported to DB.json.gz)
set -euo pipefail
DB=${1:-e2e-h200.db}
if [ -e "$DB" ]; then echo "e2e_h200.sh: $DB exists; give a new file" >&2; exit 2; fi
COMMON=(--preset llama3-8b --methods flash2,flash3,sdpa-cudnn,tensorized,simple-gla --orders 2,3
        --min-samples 3 --min-time 0 --budget 1 --quiet --db "$DB")
start=$SECONDS
tbench run "${COMMON[@]}" --scope op --batch 1,5 --lengths 4k..128k                 # Amdahl's attention times
tbench run "${COMMON[@]}" --scope layer --batch 1,5 --lengths 4k..128k
tbench run "${COMMON[@]}" --scope model --layers 2 --batch 5 --lengths 4k..128k
tbench run "${COMMON[@]}" --scope model --layers 32 --batch 5 --lengths 4k          # checks the scaled estimate
tbench run "${COMMON[@]}" --scope layer --batch 5 --lengths 4k..32k --protocol paper
echo "end-to-end sweep took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
tbench export 1 2 3 4 5 --out "$DB.json.gz" --db "$DB"   # the five runs above, in a fresh store
