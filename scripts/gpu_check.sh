#!/usr/bin/env bash
# scripts/gpu_check.sh: the evidence for this repository's CUDA path, in one capped run.
#
#   COMMIT=$(git rev-parse HEAD) bash scripts/gpu_check.sh OUT   # one GPU: at most 6 minutes
#   bash scripts/gpu_check.sh --long OUT     # the same with a longer budget run: 9 minutes
#   bash scripts/gpu_check.sh --smoke OUT    # the same steps on the CPU at tiny shapes
#
# Only OUT comes back from a lent machine. The 6 minutes leave room, in 15 minutes of a
# machine whose start takes 1 to 3, to run the check a second time. The commit is git's
# where the copy has .git, else $COMMIT (give it as above); the sha256 of the sources is
# recorded either way (gpu_report.py sources prints it here, to compare).
#
# Each step runs under its own time cap, sized from its estimated cost with a margin
# (docs/gpu-check.md has the table), none past the whole's; a failing step does not stop
# the next, and every step prints its figures as they come, so that one cut short still
# says what it measured. The budget run gets the time the other steps leave. OUT receives
# at most 8 files (scripts/gpu_report.py writes the summary):
#   summary.txt    the command, date, commit and versions, then one line per step (ok,
#                  failed or timed out; seconds) with its figures
#   env.txt        nvidia-smi and the versions, as printed
#   precision.txt  100 full-size AWD-LSTM steps at each --precision: tokens/s, train
#                  perplexity, the LSTMs' dtype and kernels, cuDNN re-packs per step
#   bench.txt      bench.py's table
#   recipe.csv, recipe.json, recipe.png   the --recipe 1cycle budget run: its metrics,
#                  its summary (test perplexity included) and its learning curve
#   logs.tar.gz    every step's log, the cuda tests' report (junit.xml)
# The steps: versions; the precisions; bench.py; then, side by side, the budget run on the
# GPU at the fastest precision that trained like fp32, and the `cuda`-marked tests (CI runs
# the others); then evaluate.py with the cache and with dynamic evaluation on a bounded
# slice of the test split, generate.py, and the learning curve.
#
# Python is ${PYTHON:-python3}: GPU machines often have python3 and no `python`.
cd "$(dirname "$0")/.."

smoke=false long=false
while [ "${1:-}" = "--smoke" ] || [ "${1:-}" = "--long" ]; do
    if [ "$1" = "--smoke" ]; then smoke=true; else long=true; fi
    shift
done
if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu_check.sh [--smoke] [--long] OUT_DIRECTORY" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
    echo "error: no $PYTHON on PATH; give the interpreter as PYTHON=..." >&2
    exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "error: cannot create $1" >&2; exit 2; }
work=$(mktemp -d)
logs="$work/logs"
mkdir -p "$logs"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
if $long; then total_s=540; else total_s=360; fi  # 9 or 6 minutes
deadline=$((started + total_s))
export PYTHONUNBUFFERED=1
commit=$(git rev-parse HEAD 2>/dev/null || echo "${COMMIT:-unknown: no .git here and no COMMIT given}")
{
    echo "command: $0 (smoke: $smoke; long: $long; python: $(command -v "$PYTHON"))"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $commit"
    echo "sources: $("$PYTHON" scripts/gpu_report.py sources)"
} >"$logs/command.txt"

# step NAME CAP COMMAND...: run COMMAND into $logs/NAME.log under min(CAP, time left);
# append "NAME | status | milliseconds" to $logs/steps.txt.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((deadline - $(date +%s) - 5))
    if [ "$cap" -gt "$left" ]; then cap=$left; fi
    if [ "$cap" -lt 1 ]; then
        echo "$name | skipped: no time left | 0" >>"$logs/steps.txt"
        return
    fi
    local t0 status
    t0=$(date +%s%N)
    timeout --kill-after=5 "$cap" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out after ${cap}s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    echo "$name | $status | $((($(date +%s%N) - t0) / 1000000))" >>"$logs/steps.txt"
}

# Caps in seconds (docs/gpu-check.md: each against its estimated cost). A Python process
# that imports torch on the GPU and reads WikiText-2 takes about 10 s before its work.
if $smoke; then  # tiny shapes on the CPU, on a small corpus made here
    device=cpu
    precisions="torch bf16"  # (fp32 computes as torch on the CPU; tf32 is a GPU format)
    "$PYTHON" - "$work/corpus" <<'EOF'
import os, random, sys
random.seed(0)
words = [f"w{i}" for i in range(60)]
os.makedirs(sys.argv[1])
for name, lines in (("train.txt", 400), ("valid.txt", 60), ("test.txt", 60)):
    with open(os.path.join(sys.argv[1], name), "w") as f:
        f.writelines(" ".join(random.choices(words, k=10)) + "\n" for _ in range(lines))
EOF
    data=(--data "$work/corpus")
    shapes=(--awd-emsize 16 --awd-nhid 24 --awd-batch-size 4 --awd-bptt 10
            --lstm-emsize 16 --lstm-nhid 16 --lstm-batch-size 4 --lstm-bptt 10)
    # (--peak-n 256: the 2048 matmuls that measure a GPU's peak take 2 s of a CPU)
    precision_steps=(--configs a "${shapes[@]}" --steps 30 --warmup 1 --repeats 1 --peak-n 256)
    bench=(--configs abcde "${shapes[@]}" --steps 3 --warmup 1 --repeats 1 --cutoffs 2000
           --peak-n 256)
    recipe=(--emsize 16 --nhid 24 --batch_size 4 --bptt 10)
    recipe_most_s=9  # the smoke's budget run: 0.15 minutes
    tests=(tests/test_cuda.py tests/test_util.py)  # (the cuda ones skip on the CPU)
    cache_slice=(--max-tokens 300)
    dynamic_slice=(--max-tokens 300 --dyn-stat-batches 2)
else
    device=cuda
    precisions="fp32 torch tf32 bf16"
    data=()
    precision_steps=(--configs a --full --steps 60 --warmup 5 --repeats 1)
    bench=(--steps 20 --warmup 3 --repeats 1)
    recipe=()
    recipe_most_s=600
    tests=(-m cuda)
    cache_slice=(--max-tokens 50000)
    dynamic_slice=(--max-tokens 10000 --dyn-stat-batches 100)
fi
cap_env=15 cap_precision=25 cap_bench=45 cap_cache=30 cap_dynamic=30 cap_generate=15
cap_plot=10 finishing=10  # (the summary and the archive)

step env "$cap_env" bash -c "nvidia-smi || echo 'nvidia-smi: none'; \"$PYTHON\" -c '
import platform, torch
print(\"python\", platform.python_version(), \"| torch\", torch.__version__, \"| CUDA\",
      torch.version.cuda, \"| cuDNN\", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(\"GPU\", p.name, \"| compute capability\", f\"{p.major}.{p.minor}\", \"| memory\",
          f\"{p.total_memory / 2**30:.0f} GiB\", \"| bf16\", torch.cuda.is_bf16_supported())
else:
    print(\"GPU none\")'; nvidia-smi --query-gpu=driver_version --format=csv,noheader \
    | sed 's/^/driver /' || true"
for precision in $precisions; do
    step "precision-$precision" "$cap_precision" "$PYTHON" bench.py --device "$device" \
        --precision "$precision" "${data[@]}" "${precision_steps[@]}"
done
step bench "$cap_bench" "$PYTHON" bench.py --device "$device" "${data[@]}" "${bench[@]}"

# Side by side: the budget run (GPU) and the cuda tests. The run gets the time left but for
# the steps after it and its own start-up (30 s: import, the corpus, the process's end);
# it trains at the fastest precision whose steps matched fp32's (gpu_report.py choose).
recipe_precision=$("$PYTHON" scripts/gpu_report.py choose "$logs" 2>>"$logs/choose.log")
[ -n "$recipe_precision" ] || recipe_precision=torch  # (should the choice itself fail)
after=$((cap_cache + cap_dynamic + cap_generate + cap_plot + finishing))
recipe_cap=$((deadline - $(date +%s) - after - 5))
budget_s=$((recipe_cap - 30 < recipe_most_s ? recipe_cap - 30 : recipe_most_s))
if [ "$budget_s" -lt 6 ]; then budget_s=6; fi
echo "a budget of $budget_s s, under a cap of $recipe_cap s" >>"$logs/choose.log"
step recipe "$recipe_cap" "$PYTHON" train.py --recipe 1cycle --device "$device" "${data[@]}" \
    "${recipe[@]}" --precision "$recipe_precision" \
    --budget-minutes "$("$PYTHON" -c "print($budget_s / 60)")" --save "$work/recipe.pt" &
step tests "$recipe_cap" "$PYTHON" -m pytest -v -p no:cacheprovider \
    --junitxml="$logs/junit.xml" "${tests[@]}" &
wait

step evaluate-cache "$cap_cache" "$PYTHON" evaluate.py --checkpoint "$work/recipe.pt" \
    --device "$device" --cache "${cache_slice[@]}"
step evaluate-dynamic "$cap_dynamic" "$PYTHON" evaluate.py --checkpoint "$work/recipe.pt" \
    --device "$device" --dynamic "${dynamic_slice[@]}"
step generate "$cap_generate" "$PYTHON" generate.py --checkpoint "$work/recipe.pt" \
    --device "$device" --prompt "The castle was built in" --words 60 --temperature 0.8
step plot "$cap_plot" "$PYTHON" plot.py "$work/recipe.csv" -o "$work/recipe.png"

# The files back: at most 8, everything else in logs.tar.gz.
cp "$logs/env.log" "$out/env.txt" 2>/dev/null
for precision in $precisions; do cat "$logs/precision-$precision.log"; done \
    >"$out/precision.txt" 2>/dev/null
cp "$logs/bench.log" "$out/bench.txt" 2>/dev/null
for kind in csv json png; do cp "$work/recipe.$kind" "$out/recipe.$kind" 2>/dev/null; done
"$PYTHON" scripts/gpu_report.py summary "$logs" "$work/recipe.csv" >"$out/summary.txt"
tar -czf "$out/logs.tar.gz" -C "$work" logs
cat "$out/summary.txt"
echo "gpu_check.sh: $(($(date +%s) - started)) s; files in $out: $(ls "$out" | wc -l)"
