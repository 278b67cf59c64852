"""provenance.py: where a trained model came from: the command, the repository commit, the
torch and CUDA versions, the device, the date and the sha256 of the data files; and how to
print it and compare it with other data.

A run records one entry when it starts and one more each time it is resumed; checkpoints,
the metrics CSV and the JSON summary all carry the list, as plain strings and dicts.
"""

import os
import platform
import socket
import subprocess
import time

import torch

from config import describe_device

REPO = os.path.dirname(os.path.abspath(__file__))
KEYS = ("command", "date", "commit", "torch", "cuda", "device", "host", "data", "data_sha256")
ADDED_KEYS = ("processes",)  # recorded since torchrun runs exist; older records lack them


def git_commit():
    """The repository's commit, marked when tracked files have uncommitted changes;
    "none" outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "none"
    return commit + (" (with uncommitted changes)" if changed else "")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def record(command, device, corpus, processes="1 process"):
    """One entry: this process's command line (a string), device, processes (under torchrun,
    distributed.Group.describe's) and data."""
    name = describe_device(device)
    return dict(
        command=command, processes=processes,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        commit=git_commit(), torch=str(torch.__version__), cuda=str(torch.version.cuda or "none"),
        device=name if device.type == "cuda" else f"{cpu_name()}, {name}",
        host=socket.gethostname(), data=os.path.abspath(corpus.path),
        data_sha256=dict(corpus.sha256))


def describe(entries):
    """Lines that say where a run came from, one paragraph per entry."""
    lines = []
    for i, entry in enumerate(entries):
        lines += [f"{'started' if i == 0 else 'resumed'} {entry['date']}: {entry['command']}",
                  f"  commit {entry['commit']} | torch {entry['torch']}, CUDA {entry['cuda']} "
                  f"| {entry['device']} on {entry['host']}"
                  + (f", {entry['processes']}" if "processes" in entry else ""),
                  f"  data {entry['data']}: sha256 " + ", ".join(
                      f"{split} {digest}" for split, digest in entry["data_sha256"].items())]
    return lines or ["no provenance recorded (written before this repository recorded it)"]


def data_differs(entries, corpus, split):
    """A warning when the `split` file of `corpus` is not the one the run trained with
    (compared by sha256), else None."""
    trained = entries[0]["data_sha256"].get(split) if entries else None
    if trained is None or trained == corpus.sha256[split]:
        return None
    return (f"warning: the {split} split of {corpus.path} differs from the one this model was "
            f"trained with ({entries[0]['data']}; sha256 {corpus.sha256[split][:12]}... "
            f"here, {trained[:12]}... there), so its perplexity is not comparable with the "
            "training run's")
