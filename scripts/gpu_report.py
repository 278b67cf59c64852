"""scripts/gpu_report.py: read the logs of scripts/gpu_check.sh, for the script.

    python3 scripts/gpu_report.py choose LOGS          # the precision for the budget run
    python3 scripts/gpu_report.py summary LOGS CSV     # summary.txt, on standard output
    python3 scripts/gpu_report.py sources              # the sha256 of the code, here

`choose` prints the fastest --precision whose full-size steps trained like fp32's (finite,
train perplexity within TRAINS_LIKE of fp32's, no cuDNN re-packs), "torch" when none did.
`summary` writes one line per step (status, seconds, warning lines) with its figures below
it, reading whatever a step left, also when its time cap cut it short: the last partial
figures of bench.py, the epochs a budget run finished, the test outcomes that pytest
printed before it was stopped. Standard library only, so that it runs wherever the check
does.
"""

import csv
import glob
import hashlib
import os
import re
import sys
import xml.etree.ElementTree as ET

TRAINS_LIKE = 0.10  # at most this far, relative, from fp32's mean train perplexity
# bench.py's line for a finished timing, and for a partial one
RESULT = re.compile(r"^\((?P<label>[a-z])\) \d+/\d+: (?P<ms>[\d.]+) ms/step, "
                    r"(?P<tokens>[\d,]+) tokens/s, train ppl (?P<ppl>[\d,.]+|inf|nan), LSTMs "
                    r"in (?P<dtype>\w+) on (?P<kernels>[\w+]+) kernels, (?P<repacks>\d+) "
                    r"re-packs$")
PARTIAL = re.compile(r"^\([a-z]\) \d+/\d+, after \d+ of \d+ timed steps: ")
# bench.py's table: the peaks, the header, a row per configuration (and precision), the
# ratios, the shapes
TABLE = re.compile(r"^(peak|configuration |\([a-z]\) (?!\d+/\d+)|[a-z]/[a-z] |[a-z]: \w+/\w+ "
                   r"|shapes |\([a-z]\), )")


def read(logs, name):
    path = os.path.join(logs, name)
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def steps(logs):
    """[(name, status, seconds)] in the order the steps ended."""
    rows = []
    for line in read(logs, "steps.txt").splitlines():
        name, status, milliseconds = (part.strip() for part in line.split("|"))
        rows.append((name, status, int(milliseconds) / 1000))
    return rows


def timing(log):
    """bench.py's figures of its first finished timing in `log`, as a dict, or None."""
    for line in log.splitlines():
        match = RESULT.match(line)
        if match:
            found = match.groupdict()
            return dict(found, tokens=float(found["tokens"].replace(",", "")),
                        ppl=float(found["ppl"].replace(",", "")), repacks=int(found["repacks"]))
    return None


def choose(logs):
    """The precision the budget run trains at (see the module's docstring)."""
    status = {name: state for name, state, _ in steps(logs)}
    measured = {}
    for name, state in status.items():
        if name.startswith("precision-") and state == "ok":
            figures = timing(read(logs, f"{name}.log"))
            if figures is not None:
                measured[name[len("precision-"):]] = figures
    reference = measured.get("fp32") or measured.get("torch")
    healthy = {precision: m for precision, m in measured.items()
               if reference is not None and m["repacks"] == 0 and m["ppl"] == m["ppl"]
               and abs(m["ppl"] / reference["ppl"] - 1) <= TRAINS_LIKE}
    chosen = max(healthy, key=lambda p: healthy[p]["tokens"]) if healthy else "torch"
    seen = "; ".join(f"{p} {m['tokens']:,.0f} tokens/s, train ppl {m['ppl']:,.1f}"
                     + ("" if p in healthy else " (not like fp32)") for p, m in measured.items())
    print(f"--precision {chosen}: the fastest that trained like fp32 ({seen or 'none measured'})",
          file=sys.stderr)
    return chosen


def test_outcomes(logs):
    """{test id: passed | failed | skipped} from the junit report, or, when the step was cut
    short before pytest wrote it, from the outcomes that `pytest -v` printed."""
    outcomes = {}
    report = os.path.join(logs, "junit.xml")
    if os.path.exists(report):
        for case in ET.parse(report).getroot().iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            outcomes[f"{case.get('classname')}.{case.get('name')}"] = (
                "failed" if failed else "skipped" if case.find("skipped") is not None
                else "passed")
        return outcomes
    for match in re.finditer(r"^(\S+::.+?) (PASSED|FAILED|SKIPPED|ERROR)\b",
                             read(logs, "tests.log"), re.M):
        word = match.group(2).lower()
        outcomes[match.group(1)] = "failed" if word == "error" else word
    return outcomes


def figures(logs, name, curve_csv):
    """The lines that say what step `name` measured."""
    log = read(logs, f"{name}.log")
    lines = log.splitlines()
    if name == "env":
        return [line for line in lines if line.startswith(("python ", "GPU ", "driver "))]
    if name.startswith("precision-") or name == "bench":
        done = [line for line in lines if RESULT.match(line)]
        table = [line for line in lines if TABLE.match(line)]
        partial = [line for line in lines if PARTIAL.match(line)][-1:]
        return (done if name != "bench" else table or done) or partial
    if name == "recipe":
        kept = [line for line in lines if line.startswith((
            "device:", "budget ", "schedule 1cycle", "finished", "stopped", "best model",
            "error"))]
        return kept + curve(curve_csv)
    if name.startswith("evaluate"):
        return [line for line in lines if " ppl " in line or "ppl so far" in line][-4:]
    if name == "generate":
        return [" ".join(log.split())[:400]]
    if name == "tests":
        outcomes = test_outcomes(logs)
        counts = {kind: list(outcomes.values()).count(kind)
                  for kind in ("passed", "failed", "skipped")}
        return [", ".join(f"{n} {kind}" for kind, n in counts.items())] + [
            f"{test}: {outcome}" for test, outcome in outcomes.items() if outcome != "skipped"]
    return []


def curve(path):
    """The learning curve of the budget run, one line per epoch, from its metrics CSV."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [f"epoch {r['epoch']:>3} | {float(r['seconds']):6.1f} s | train ppl "
            f"{float(r['train_ppl']):9.2f} | valid ppl {float(r['valid_ppl']):9.2f} | lr "
            f"{float(r['lr']):.2e}" + (f" | {r['event']}" if r["event"] else "")
            for r in rows]


def summary(logs, curve_csv):
    lines = ["gpu_check.sh: a line per step (name, status, time, warning lines), its figures "
             "indented"] + read(logs, "command.txt").splitlines()
    lines += [f"budget run: {line}" for line in read(logs, "choose.log").splitlines()]
    lines += ["step | status | seconds | warning lines"]
    for name, status, seconds in steps(logs):
        log = read(logs, f"{name}.log")
        warnings = sum(1 for line in log.splitlines() if "Warning" in line or "warning:" in line)
        lines.append(f"{name} | {status} | {seconds:.1f} s | {warnings} warning lines")
        lines += ["    " + line for line in figures(logs, name, curve_csv)]
        if status != "ok":  # what it said last: the error, or where its cap cut it
            lines += ["    last: " + line for line in log.strip().splitlines()[-3:]]
    return "\n".join(lines) + "\n"


def sources(root="."):
    """sha256 of the repository's code (its .py files, scripts/ and requirements*.txt, by
    name and content, in a fixed order): which code ran, where the copy has no .git."""
    digest = hashlib.sha256()
    names = sorted(name for pattern in ("*.py", "scripts/*", "tests/*.py", "requirements*.txt")
                   for name in glob.glob(os.path.join(root, pattern)))
    for name in names:
        digest.update(os.path.relpath(name, root).encode() + b"\0")
        with open(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


if __name__ == "__main__":
    if sys.argv[1:2] == ["choose"] and len(sys.argv) == 3:
        print(choose(sys.argv[2]))
    elif sys.argv[1:2] == ["summary"] and len(sys.argv) == 4:
        sys.stdout.write(summary(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:] == ["sources"]:
        print(sources())
    else:
        sys.exit("usage: gpu_report.py choose LOGS | summary LOGS RECIPE_CSV | sources")
