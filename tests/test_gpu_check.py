"""Tests of scripts/gpu_check.sh and scripts/gpu_report.py: the --smoke mode runs every step
of the GPU evidence run on the CPU at tiny shapes, with only `python3` on PATH as on the GPU
image, so that the script cannot rot between GPU sessions; the report chooses the budget
run's precision and reads steps that a time cap cut short."""

import importlib.util
import os
import re
import shlex
import stat
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["bench.txt", "env.txt", "logs.tar.gz", "precision.txt", "recipe.csv", "recipe.json",
         "recipe.png", "summary.txt"]
STEPS = ["env", "precision-torch", "precision-bf16", "bench", "recipe", "tests",
         "evaluate-cache", "evaluate-dynamic", "generate", "plot"]

spec = importlib.util.spec_from_file_location(
    "gpu_report", os.path.join(REPO, "scripts", "gpu_report.py"))
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)


def only_python3(bin_dir):
    """A PATH on which `python3` is this interpreter and `python` does not run (a stub that
    fails as a missing command does), the system's tools behind them. `python3` is a script
    that runs this interpreter by its own path: a link to it would start outside a virtual
    environment (Python finds pyvenv.cfg beside the path it was started by)."""
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python3.chmod(python3.stat().st_mode | stat.S_IEXEC)
    stub = bin_dir / "python"
    stub.write_text("#!/bin/sh\necho 'python: command not found' >&2\nexit 127\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_the_smoke_run_passes_every_step_with_python3_alone_and_returns_8_files(tmp_path):
    env = dict(os.environ, PATH=only_python3(tmp_path / "bin"))
    env.pop("PYTHON", None)
    env.update(GIT_DIR=str(tmp_path / "no-git"), COMMIT="0123abc")  # a copy without .git
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--smoke",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=400,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == FILES
    summary = (tmp_path / "out" / "summary.txt").read_text()
    statuses = {line.split(" | ")[0]: line.split(" | ")[1] for line in summary.splitlines()
                if " | " in line and not line.startswith((" ", "step |"))}
    assert statuses == {name: "ok" for name in STEPS}, summary
    assert f"python: {tmp_path / 'bin' / 'python3'}" in summary
    precision = (tmp_path / "out" / "precision.txt").read_text()
    assert "LSTMs in bfloat16 on" in precision and "LSTMs in float32 on onednn" in precision
    assert "budget run: --precision " in summary and "schedule 1cycle: " in summary
    # every row and ratio of bench.py's table, the peak with them
    table = [line for line in (tmp_path / "out" / "bench.txt").read_text().splitlines()
             if re.match(r"\([a-z]\) [A-Za-z(-]|[a-z]/[a-z] |peak: ", line)]
    assert len(table) >= 8 and all(f"    {line}\n" in summary for line in table), table
    assert f"sources: {gpu_report.sources(REPO)}" in summary and "commit: 0123abc" in summary
    assert "test ppl" in summary and "epoch   1 |" in summary  # the test, the curve
    assert "cache (W 3785" in summary and "dynamic (lr " in summary
    assert " passed, 0 failed, " in summary  # the tests' outcomes
    assert (tmp_path / "out" / "recipe.png").stat().st_size > 1000


def write_logs(logs, steps, files):
    logs.mkdir()
    (logs / "steps.txt").write_text("".join(f"{name} | {status} | 1000\n"
                                            for name, status in steps))
    for name, text in files.items():
        (logs / name).write_text(text)
    return str(logs)


def timed(precision, tokens, ppl, repacks=0, dtype="float32"):
    return (f"torch 2.11.0 | cuda (NVIDIA H200, {precision})\n"
            f"(a) 1/1, after 25 of 100 timed steps: 40.0 ms/step, 1,000 tokens/s, train ppl "
            f"9,000.0\n(a) 1/1: 35.0 ms/step, {tokens:,} tokens/s, train ppl {ppl:,.1f}, LSTMs "
            f"in {dtype} on cudnn kernels, {repacks} re-packs\n")


def test_the_budget_run_takes_the_fastest_precision_that_trained_like_fp32(tmp_path):
    steps = [("precision-fp32", "ok"), ("precision-torch", "ok"), ("precision-tf32", "ok"),
             ("precision-bf16", "ok")]
    logs = write_logs(tmp_path / "a", steps, {
        "precision-fp32.log": timed("fp32", 100_000, 2000.0),
        "precision-torch.log": timed("torch", 120_000, 2010.0),
        "precision-tf32.log": timed("tf32", 150_000, 1990.0),
        "precision-bf16.log": timed("bf16", 200_000, 2600.0, dtype="bfloat16")})  # 30% off
    assert gpu_report.choose(logs) == "tf32"
    # a precision whose step failed, timed out or re-packed cuDNN's weights is passed over
    logs = write_logs(tmp_path / "b", [("precision-fp32", "ok"), ("precision-torch", "ok"),
                                       ("precision-tf32", "timed out after 35s"),
                                       ("precision-bf16", "ok")], {
        "precision-fp32.log": timed("fp32", 100_000, 2000.0),
        "precision-torch.log": timed("torch", 120_000, 2010.0),
        "precision-tf32.log": timed("tf32", 150_000, 1990.0),
        "precision-bf16.log": timed("bf16", 200_000, 2000.0, repacks=3)})
    assert gpu_report.choose(logs) == "torch"
    # nothing measured at all: PyTorch's defaults
    assert gpu_report.choose(write_logs(tmp_path / "c", [("precision-fp32", "failed (exit 1)")],
                                        {})) == "torch"


def test_a_step_cut_short_still_reports_what_it_measured(tmp_path):
    logs = write_logs(tmp_path / "logs", [("precision-bf16", "timed out after 35s"),
                                          ("tests", "timed out after 200s")], {
        "precision-bf16.log": "torch 2.11.0\n(a) 1/1, after 25 of 100 timed steps: 40.0 ms/"
                              "step, 140,000 tokens/s, train ppl 9,000.0\n(a) 1/1, after 50 of"
                              " 100 timed steps: 39.0 ms/step, 143,590 tokens/s, train ppl "
                              "5,000.0\n",
        "tests.log": "tests/test_cuda.py::test_a PASSED [ 10%]\ntests/test_cuda.py::test_b "
                     "FAILED [ 20%]\ntests/test_train.py::test_c[cuda] SKIPPED (why) [ 30%]\n"})
    text = gpu_report.summary(logs, str(tmp_path / "no.csv"))
    assert "precision-bf16 | timed out after 35s | 1.0 s" in text
    assert "    (a) 1/1, after 50 of 100 timed steps: 39.0 ms/step" in text  # the latest
    assert "    (a) 1/1, after 25 of" not in text  # (but among the last lines it printed)
    assert "    1 passed, 1 failed, 1 skipped" in text  # from pytest -v, no junit.xml
    assert "    tests/test_cuda.py::test_b: failed" in text
    assert "    last: tests/test_train.py::test_c[cuda] SKIPPED (why) [ 30%]" in text
