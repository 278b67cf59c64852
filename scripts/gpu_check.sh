#!/usr/bin/env bash
# scripts/gpu_check.sh: the evidence for this repository's CUDA path, in one capped run.
#
#   bash scripts/gpu_check.sh OUT            # on one GPU: at most 9 minutes in all
#   bash scripts/gpu_check.sh --smoke OUT    # the same steps on the CPU at tiny shapes
#
# Each step runs under its own time cap (and none past the 9 minutes), a failing step
# does not stop the next, and OUT receives at most 8 files:
#   summary.txt    one line per step (ok, failed or timed out; seconds) and its figures
#   command.txt    this command, the date, the commit
#   env.txt        GPU, driver, torch, CUDA and cuDNN versions
#   precision.txt  150 full-size AWD-LSTM steps at each --precision: tokens/s, train
#                  perplexity, the dtype the LSTMs computed in, cuDNN re-packs per step
#   bench.txt      bench.py's table
#   recipe.csv     the metrics of a 6-minute budget run of --recipe 1cycle
#   recipe.json    its summary, test perplexity included
#   logs.tar.gz    every step's log, the test report (junit.xml), the samples
# The steps: versions; the precisions; bench.py; then, side by side, the budget run on the
# GPU and the whole test suite (unmarked tests on the CPU, `cuda` ones on the GPU, the
# baseline's stop-and-resume exactness among them); then evaluate.py with the cache and
# with dynamic evaluation on a bounded slice of the test split, and generate.py.
cd "$(dirname "$0")/.."

smoke=false
if [ "${1:-}" = "--smoke" ]; then smoke=true; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: bash scripts/gpu_check.sh [--smoke] OUT_DIRECTORY" >&2
    exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "error: cannot create $1" >&2; exit 2; }
work=$(mktemp -d)
logs="$work/logs"
mkdir -p "$logs"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
deadline=$((started + 540))  # 9 minutes
export PYTHONUNBUFFERED=1
echo "$0 $* (smoke: $smoke)" >"$out/command.txt"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse HEAD 2>/dev/null)" \
    >>"$out/command.txt"

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

if $smoke; then  # tiny shapes on the CPU, on a small corpus made here
    device=cpu
    precisions="torch bf16"  # (fp32 computes as torch on the CPU; tf32 is a GPU format)
    python - "$work/corpus" <<'EOF'
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
    precision_steps=(--configs a "${shapes[@]}" --steps 5 --warmup 1 --repeats 1)
    bench=(--configs abcde "${shapes[@]}" --steps 3 --warmup 1 --repeats 1 --cutoffs 2000)
    recipe=(--emsize 16 --nhid 24 --batch_size 4 --bptt 10 --budget-minutes 0.1)
    tests=(tests/test_util.py
           "tests/test_train.py::test_the_baseline_resumes_mid_epoch_with_the_same_dropout")
    slice=(--max-tokens 300)
    dyn_stats=2
else
    device=cuda
    precisions="fp32 torch tf32 bf16"
    data=()
    shapes=()
    precision_steps=(--configs a --full --steps 150 --warmup 3 --repeats 1)
    bench=()
    recipe=(--budget-minutes 6)
    tests=()
    slice=(--max-tokens 50000)
    dyn_stats=100
fi

step env 10 bash -c "nvidia-smi || echo 'nvidia-smi: none'; python -c '
import torch
print(\"torch\", torch.__version__, \"| CUDA\", torch.version.cuda, \"| cuDNN\",
      torch.backends.cudnn.version(), \"| GPU\",
      torch.cuda.get_device_name() if torch.cuda.is_available() else \"none\")'"
for precision in $precisions; do
    step "precision-$precision" 15 python bench.py --device "$device" --precision "$precision" \
        "${precision_steps[@]}"
done
step bench 38 python bench.py --device "$device" "${bench[@]}"

# Side by side: the budget run (GPU) and the test suite (the CPU, but for `cuda` tests).
step recipe 372 python train.py --recipe 1cycle --device "$device" "${data[@]}" \
    "${recipe[@]}" --save "$work/recipe.pt" &
step tests 360 python -m pytest -q -p no:cacheprovider --junitxml="$logs/junit.xml" \
    "${tests[@]}" &
wait

step evaluate-cache 20 python evaluate.py --checkpoint "$work/recipe.pt" --device "$device" \
    --cache "${slice[@]}"
step evaluate-dynamic 20 python evaluate.py --checkpoint "$work/recipe.pt" \
    --device "$device" --dynamic --dyn-stat-batches "$dyn_stats" "${slice[@]}"
step generate 10 python generate.py --checkpoint "$work/recipe.pt" --device "$device" \
    --prompt "The castle was built in" --words 60 --temperature 0.8

# The files back: at most 8, everything else in logs.tar.gz.
cp "$logs/env.log" "$out/env.txt" 2>/dev/null
for precision in $precisions; do cat "$logs/precision-$precision.log"; done \
    >"$out/precision.txt" 2>/dev/null
cp "$logs/bench.log" "$out/bench.txt" 2>/dev/null
cp "$work/recipe.csv" "$out/recipe.csv" 2>/dev/null
cp "$work/recipe.json" "$out/recipe.json" 2>/dev/null
python - "$logs" "$out" "$smoke" <<'EOF'
import glob, json, os, re, sys
import xml.etree.ElementTree as ET
logs, out, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
lines = [f"gpu_check.sh{' --smoke' if smoke else ''}: a line per step (name, status, time, "
         "warnings), its figures indented"]


def read(name):
    path = os.path.join(logs, name)
    return open(path, errors="replace").read() if os.path.exists(path) else ""


for row in read("steps.txt").splitlines():
    name, status, seconds = (part.strip() for part in row.split("|"))
    figures = ""
    log = read(f"{name}.log")
    if name.startswith("precision-") or name == "bench":  # bench.py's rows
        rows = [l for l in log.splitlines() if re.match(r"\([a-f]\) ", l)]
        figures = "\n    " + "\n    ".join(rows) if rows else ""
    elif name == "recipe":
        plan = [l for l in log.splitlines() if l.startswith(("plan:", "schedule 1cycle"))]
        best = [l for l in log.splitlines() if l.startswith("best model")]
        figures = "\n    " + "\n    ".join(plan + best) if plan + best else ""
    elif name.startswith("evaluate"):
        rows = [l for l in log.splitlines() if " ppl " in l]
        figures = "\n    " + "\n    ".join(rows) if rows else ""
    elif name == "generate":
        figures = "\n    " + " ".join(log.split())[:200]
    elif name == "tests" and os.path.exists(os.path.join(logs, "junit.xml")):
        cases = ET.parse(os.path.join(logs, "junit.xml")).getroot().iter("testcase")
        outcome = {}
        for case in cases:
            kind = ("failed" if case.find("failure") is not None or case.find("error")
                    is not None else "skipped" if case.find("skipped") is not None else "passed")
            outcome[f"{case.get('classname')}.{case.get('name')}"] = kind
        for label, keep in (("all", lambda n: True), ("cuda-marked (tests/test_cuda.py and "
                                                      "[cuda] cases)", lambda n: "cuda" in n)):
            chosen = [k for n, k in outcome.items() if keep(n)]
            counts = {k: chosen.count(k) for k in ("passed", "failed", "skipped")}
            figures += f"\n    {label}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
        figures += "".join(f"\n    {n}: {k}" for n, k in outcome.items()
                           if "baseline_resumes" in n or k == "failed")
    warnings = sum(1 for l in log.splitlines() if "Warning" in l or "warning:" in l)
    lines.append(f"{name} | {status} | {int(seconds) / 1000:.1f} s | {warnings} warning lines"
                 + figures)
open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
EOF
tar -czf "$out/logs.tar.gz" -C "$work" logs
cat "$out/summary.txt"
echo "gpu_check.sh: $(($(date +%s) - started)) s; files in $out: $(ls "$out" | wc -l)"
