"""Tests of scripts/gpu_check.sh: its --smoke mode runs every step of the GPU evidence run on
the CPU at tiny shapes, so that the script cannot rot between GPU sessions."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["bench.txt", "command.txt", "env.txt", "logs.tar.gz", "precision.txt", "recipe.csv",
         "recipe.json", "summary.txt"]
STEPS = ["env", "precision-torch", "precision-bf16", "bench", "recipe",
         "tests", "evaluate-cache", "evaluate-dynamic", "generate"]


def test_the_smoke_run_passes_every_step_and_returns_at_most_8_files(tmp_path):
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--smoke",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == FILES
    summary = (tmp_path / "out" / "summary.txt").read_text()
    statuses = {line.split(" | ")[0]: line.split(" | ")[1] for line in summary.splitlines()
                if " | " in line and not line.startswith(" ")}
    assert statuses == {name: "ok" for name in STEPS}, summary
    assert "bfloat16" in (tmp_path / "out" / "precision.txt").read_text()
    assert "schedule 1cycle over" in summary and "test ppl" in summary
    assert "baseline_resumes_mid_epoch_with_the_same_dropout[cpu]: passed" in summary
