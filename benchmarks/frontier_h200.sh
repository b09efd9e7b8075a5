#!/usr/bin/env bash
# The kernel and training tables on one H200 (B = 1, H = 32, H_kv = 8, D = 128, bf16, causal), each
# part sized to finish within ten minutes, each writing its store, bundle and `tbench show` table
# under OUT_DIR:
#   forward   every tensorized method against tensorized-sdpa, cuDNN and FA3, 4k..128k, m = 2, 3, 4
#             (docs/kernel.md's final table)
#   training  fwd_bwd of the tensorized methods and the exact kernels with a backward, 4k..128k, m = 2, 3
#   linear    fwd_bwd of the linear peers with a backward at 4k, 32k, 128k (apart: fla-core tunes its
#             kernels at each new length, 4.5 min for gla at 4k on an H200)
#   trainbench  benchmarks/train_bench.py's per-method table at 16k, 32k, 128k (the tensorized
#             methods' forward and fwd+bwd side by side, each with its own chosen plan, and their
#             gradients against tensorized-ref's)
#   gate      benchmarks/gate_aa.py in fwd and fwd_bwd modes (or those of GATE_MODES) at 16k, 64k, 128k:
#             an A/A, then 10 % more heads injected into `tensorized`; the verdicts of `tbench gate` on both
#   tiles     benchmarks/backward_tiles.py at 128k, m = 3 (hops 1 and 2, then 3) then 2: the backward
#             kernels' launch shapes, judged against a float32 backward, each with TMA boxes and with
#             pointer loads
#   levers    benchmarks/backward_tiles.py --levers on m = 3's hops, one a call: 128k hops 2 and 1 (slices
#             of 64), 32k hops 2 and 1 and 128k hop 3 (slices of 32): the packed backward's table
#             tile against its products transposed, two pipeline stages and both, and the two-stage
#             tiles with TMA boxes, each judged against a float32 backward
#   hops      benchmarks/backward_tiles.py --table-only at 32k and 128k, m = 2, 3: each hop's backward as
#             runs launch it, timed alone, beside the same hop's backward on cuDNN (where a training
#             step's backward time goes, hop by hop)
#   configs   benchmarks/kernel_bench.py --sweep: every forward config on every hop of 128k m = 2, 3
#             and 4k m = 2, 3, with TMA boxes and with pointer loads
#   host      benchmarks/host_profile.py at 4k and 16k: the host's time to issue each tensorized call
#             (forward, training step) against cuDNN's, and where the Triton chain's goes
#   chunks    benchmarks/l2_chunks.py at 16k..128k, m = 2: both hops a kv group or a head at a time
#             against both hops over all heads (whether the intermediate stays in L2 between them)
# Usage: benchmarks/frontier_h200.sh forward|training|linear|trainbench|gate|tiles|levers|hops|configs|host|chunks OUT_DIR [extra tbench run options]
set -euo pipefail
PART=${1:?usage: frontier_h200.sh forward|training|linear|trainbench|gate|tiles|levers|hops|configs|host|chunks OUT_DIR [tbench run options]}
OUT=${2:?usage: frontier_h200.sh forward|training|linear|trainbench|gate|tiles|levers|hops|configs|host|chunks OUT_DIR [tbench run options]}
shift 2
mkdir -p "$OUT"
SAMPLING=(--budget 1 --min-time 0.3 --min-samples 5)
# backward_tiles.py runs the Triton forward only to make the tensors the backward reads; the
# backward's launches and times do not depend on the forward's configs, so they are not tuned
UNTUNED=(env TBENCH_TRITON_AUTOTUNE=0)
start=$SECONDS

sweep() {  # NAME, then tbench run options: the run, its table and its bundle
  local name=$1
  shift
  local db="$OUT/$name.db"
  if [ -e "$db" ]; then echo "frontier_h200.sh: $db exists; give a new OUT_DIR" >&2; exit 2; fi
  tbench run --preset headline --quiet --db "$db" "$@"
  tbench show latest --db "$db" > "$OUT/$name-show.txt"
  tbench export latest --out "$OUT/$name.json.gz" --db "$db"
  echo "frontier_h200.sh: $name took $((SECONDS - start)) s" >&2
}

case $PART in
  forward)
    sweep forward --lengths 4k..128k --orders 2,3,4 "${SAMPLING[@]}" \
      --methods tensorized,tensorized-triton,tensorized-sdpa,sdpa-cudnn,flash3 "$@"
    ;;
  training)
    sweep training --modes fwd_bwd --lengths 4k..128k --orders 2,3 --budget 1 --min-time 0 --min-samples 3 \
      --methods tensorized,tensorized-triton,tensorized-recompute,tensorized-sdpa,flash2,sdpa-cudnn,flex "$@"
    ;;
  linear)
    # --timeout 900: gla's first case compiles fla-core's kernels for 5 minutes on an H100's host
    # (results-h200.md, eleventh stop), which the default 300 s of silence would take for a hang
    sweep linear --modes fwd_bwd --lengths 4k,32k,128k --budget 1 --min-time 0 --min-samples 3 --timeout 900 \
      --methods simple-gla,gla,retention "$@"
    ;;
  trainbench)
    python3 benchmarks/train_bench.py --lengths 16k,32k,128k --orders 2,3 --json "$OUT/train-bench.json" \
      | tee "$OUT/train-bench.txt"
    ;;
  gate)
    # GATE_MODES="fwd_bwd" runs one mode's A/A alone
    for mode in ${GATE_MODES:-fwd fwd_bwd}; do
      python3 benchmarks/gate_aa.py "$OUT" --lengths 16k,64k,128k --modes "$mode" "$@" | tee "$OUT/gate-$mode.txt"
      mv "$OUT/gate-aa.db" "$OUT/gate-$mode.db"
      # the A/A (run 2) must pass the gate, the injected slowdown (run 3) must fail it
      aa=0
      tbench gate --baseline 1 --candidate 2 --db "$OUT/gate-$mode.db" | tee -a "$OUT/gate-$mode.txt" || aa=$?
      slow=0
      tbench gate --baseline 1 --candidate 3 --db "$OUT/gate-$mode.db" | tee -a "$OUT/gate-$mode.txt" || slow=$?
      echo "frontier_h200.sh: gate $mode: A/A exit $aa (want 0), slowdown exit $slow (want non-zero)" \
        | tee -a "$OUT/gate-$mode.txt" >&2
    done
    ;;
  tiles)
    # the packed kernel's slices of 64 (m = 3, hops 1 and 2) first: the transposed products were built for
    # them; then the last hop's slices of 32 and the blocked hops of m = 2
    "${UNTUNED[@]}" python3 benchmarks/backward_tiles.py --lengths 128k --orders 3 --hops 1,2 | tee "$OUT/backward-tiles.md"
    "${UNTUNED[@]}" python3 benchmarks/backward_tiles.py --lengths 128k --orders 3 --hops 3 | tee -a "$OUT/backward-tiles.md"
    "${UNTUNED[@]}" python3 benchmarks/backward_tiles.py --lengths 128k --orders 2 | tee -a "$OUT/backward-tiles.md"
    ;;
  levers)
    # one hop a call, the slices of 64 first: a limit that cuts the part leaves the hops that matter most
    for spec in "128k 2" "128k 1" "32k 2" "32k 1" "128k 3"; do
      read -r length hop <<< "$spec"
      "${UNTUNED[@]}" python3 benchmarks/backward_tiles.py --lengths "$length" --orders 3 --hops "$hop" --levers \
        | tee -a "$OUT/backward-levers.md"
    done
    ;;
  hops)
    "${UNTUNED[@]}" python3 benchmarks/backward_tiles.py --lengths 32k,128k --orders 2,3 --table-only \
      | tee "$OUT/backward-hops.md"
    ;;
  configs)
    python3 benchmarks/kernel_bench.py --sweep --no-table | tee "$OUT/hop-configs.txt"
    ;;
  host)
    python3 benchmarks/host_profile.py --lengths 4k,16k --orders 2,3 | tee "$OUT/host-profile.txt"
    ;;
  chunks)
    python3 benchmarks/l2_chunks.py --lengths 16k,32k,64k,128k --chunks 4,1 | tee "$OUT/l2-chunks.md"
    ;;
  *)
    echo "frontier_h200.sh: unknown part '$PART'; use forward, training, linear, trainbench, gate, tiles, levers, hops, configs, host or chunks" >&2
    exit 2
    ;;
esac
echo "frontier_h200.sh: $PART took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s" >&2
