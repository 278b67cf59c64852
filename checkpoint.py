"""checkpoint.py: write and read this project's checkpoints, atomically and as plain data.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so that it loads with
torch.load(..., weights_only=True) on any PyTorch version. Two kinds, both with
    format "lstm-lm", version, kind, config (the model's plain-dict configuration),
    vocab (list of words, id order), args (the training settings), provenance (where
    the run came from: provenance_record's records, one per start or resume)
- kind "model": `model` holds the weights to evaluate and sample from (the averaged
  weights once NT-ASGD has switched); written by train.py at `--save`.
- kind "state": everything train.py needs to continue a run exactly (raw and averaged
  weights, optimizer, epoch and position, validation history, RNG states, metrics: the
  contents of trainer.Trainer.state_dict); written beside the model file as <save>.state.pt
  (runfiles.py names a run's files).
Each also holds `checksum`, the sha256 of its tensors, which `load` checks: torch.load
does not notice bytes changed on disk.
"""

import hashlib
import io
import json
import os
import pickle
import platform
import socket
import subprocess
import time
import zipfile

import torch

from data import Vocabulary
from model import build_model, count_parameters
from runfiles import RunFiles
from util import write_atomically

FORMAT = "lstm-lm"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and says why."""


def pack(kind, config, vocab_words, settings, **contents):
    """A checkpoint of `kind` ("model" or "state"): the header every checkpoint carries (the
    model's configuration, the vocabulary, the run's settings) plus `contents`."""
    return dict(format=FORMAT, version=VERSION, kind=kind, config=config,
                vocab=list(vocab_words), args=dict(settings), **contents)


def save(path, checkpoint):
    """Write atomically (util.write_atomically), so an interrupted write never leaves a
    broken or missing checkpoint, with a checksum of its tensors that `load` verifies; a
    failed write is a util.WriteFailed."""
    buffer = io.BytesIO()
    torch.save(dict(checkpoint, checksum=tensor_checksum(checkpoint)), buffer)
    write_atomically(path, buffer.getvalue())


def tensor_checksum(checkpoint):
    """sha256 of every tensor a checkpoint holds (its place, dtype, shape and bytes), in a
    fixed order: torch.load does not check the archive's CRCs, so damage to the bytes of a
    tensor (bit rot, a bad disk) would otherwise load as other weights."""
    digest = hashlib.sha256()

    def visit(value, place):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            digest.update(f"{place}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != "checksum":
                    visit(value[key], f"{place}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{place}/{i}")

    visit(checkpoint, "")
    return digest.hexdigest()


def load(path, kind=None):
    """A checkpoint of this project as a dict on the CPU; CheckpointError if it is not one."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; give a checkpoint file in it (train.py "
                              "writes <save>.pt and <save>.state.pt)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a readable checkpoint (not a file written by "
                              "torch.save, or a truncated one)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is not a checkpoint of this project: it holds pickled objects, not "
            "plain data (train.py writes checkpoints that load with weights_only=True)") from None
    except Exception as e:  # torch raises several types for damaged archives
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project "
                              "(train.py writes them)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {checkpoint.get('version')}; "
                              f"this code reads version {VERSION}")
    if "checksum" in checkpoint and checkpoint["checksum"] != tensor_checksum(checkpoint):
        raise CheckpointError(f"{path} is damaged: its tensors no longer match the checksum "
                              "written with them (a bad disk, or a copy cut short); use an "
                              "earlier copy")
    if kind == "model" and checkpoint.get("kind") == "state":
        raise CheckpointError(
            f"{path} is a training state, for train.py --resume; pass the model checkpoint "
            "saved beside it (the --save path, e.g. checkpoints/awd.pt)")
    if kind == "state" and checkpoint.get("kind") != "state":
        raise CheckpointError(
            f"{path} is a model checkpoint without training state; resume from "
            f"{RunFiles(path).state}, or fine-tune it with --finetune {path}")
    check_contents(path, checkpoint)
    return checkpoint


# What each kind of checkpoint holds besides the header (format, version, kind) and must
# hold to be read at all; the rest of a training state is the Trainer's, which checks it
# as it loads it (trainer.Trainer.load_state_dict).
CONTENTS = {
    "model": ("config", "vocab", "args", "model", "epoch", "valid_loss", "valid_ppl"),
    "state": ("config", "vocab", "args", "model", "epoch"),
}


def check_contents(path, checkpoint):
    """Refuse a checkpoint whose parts are missing or of the wrong kind (one edited by hand,
    or damaged) with a message, before any code trips over it."""
    kind = checkpoint.get("kind")
    if kind not in CONTENTS:
        raise CheckpointError(f"{path} has an unknown checkpoint kind {kind!r}")
    missing = [key for key in CONTENTS[kind] if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it was changed after "
                              "train.py wrote it, or is damaged")
    config, vocab = checkpoint["config"], checkpoint["vocab"]
    if not isinstance(config, dict) or not isinstance(checkpoint["args"], dict):
        raise CheckpointError(f"{path}: its config and args must be dicts")
    if not (isinstance(vocab, list) and all(isinstance(w, str) for w in vocab)):
        raise CheckpointError(f"{path}: its vocab must be a list of words")
    if config.get("ntoken") != len(vocab):
        raise CheckpointError(f"{path}: its config says {config.get('ntoken')} words but its "
                              f"vocab holds {len(vocab)}")
    weights = checkpoint["model"]
    if not (isinstance(weights, dict) and all(isinstance(t, torch.Tensor)
                                              for t in weights.values())):
        raise CheckpointError(f"{path}: its model must map parameter names to tensors")
    numbers = [key for key in ("epoch", "valid_loss", "valid_ppl", "best_valid_loss")
               if key in checkpoint and not isinstance(checkpoint[key], (int, float))]
    if numbers:
        raise CheckpointError(f"{path}: its {', '.join(numbers)} must be numbers")
    entries = checkpoint.get("provenance", [])  # older checkpoints have none
    if not (isinstance(entries, list) and all(
            isinstance(e, dict) and set(PROVENANCE_KEYS) <= set(e) for e in entries)):
        raise CheckpointError(f"{path}: its provenance must be a list of records with "
                              f"{', '.join(PROVENANCE_KEYS)}")


def one_line(error):
    return " ".join(str(error).split())[:240]


def build(path, checkpoint):
    """The model a checkpoint describes, with its weights loaded; a configuration that
    builds no model, weights that do not fit it, that are not finite (a run that diverged)
    or tied ones that differ (an edit) become a CheckpointError."""
    try:
        model = build_model(checkpoint["config"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its stored configuration does not make a model "
                              f"({one_line(e)})") from None
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the stored configuration "
                              f"({one_line(e)})") from None
    weights = checkpoint["model"]
    broken = [name for name, t in weights.items()
              if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in "
                              f"{', '.join(broken[:3])}): it was saved from a run that "
                              "diverged and cannot be used")
    if checkpoint["config"].get("tied") and not torch.equal(weights["encoder.weight"],
                                                            weights["decoder.weight"]):
        raise CheckpointError(f"{path}: its configuration ties the decoder to the embedding, "
                              "but encoder.weight and decoder.weight differ: it was changed "
                              "after train.py wrote it")
    return model


def describe(path):
    """What --info prints for a checkpoint of either kind: the model, how far it was
    trained, its settings and provenance."""
    checkpoint = load(path)
    try:
        n_params = f"{count_parameters(build_model(checkpoint['config'])):,} parameters"
    except (KeyError, TypeError, ValueError, RuntimeError):
        n_params = "a configuration that builds no model"
    model = MODEL_NAMES.get(checkpoint["config"].get("model"), "an unknown model")
    lines = [f"{path}: {checkpoint['kind']} checkpoint of {model}, {n_params}, vocabulary "
             f"{len(checkpoint['vocab']):,}, after epoch {checkpoint['epoch']}"
             + (f", valid ppl {checkpoint['valid_ppl']:.2f}" if "valid_ppl" in checkpoint else "")
             + tested(path, checkpoint)]
    lines.append("settings: " + " ".join(f"{k}={v}" for k, v in sorted(checkpoint["args"].items())))
    return lines + describe_provenance(checkpoint.get("provenance", []))


MODEL_NAMES = {"awd": "an AWD-LSTM", "lstm": "a baseline LSTM"}


def tested(path, checkpoint):
    """", test ppl 65.80 (batch 1)" when the run's summary beside a model checkpoint (train.py
    writes <stem>.json at the end) tested this very model, else ""."""
    summary_file = RunFiles(path).summary
    try:
        with open(summary_file, encoding="utf-8") as f:
            summary = json.load(f)
        if (checkpoint["kind"] == "model" and summary.get("test_ppl") is not None
                and summary.get("best_epoch") == checkpoint["epoch"]
                and summary.get("best_valid_ppl") == round(checkpoint["valid_ppl"], 3)):
            return f", test ppl {summary['test_ppl']:.2f} (batch {summary['test_batch_size']})"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return ""


def precision(checkpoint):
    """The --precision of the run that wrote `checkpoint` (torch's defaults for a checkpoint
    from before the setting existed); the scripts that read it apply the same."""
    return checkpoint["args"].get("precision", "torch")


def check_same_data(resume, state, corpus, data_changed):
    """Refuse to resume `state` (from the file `resume`) on data files other than those the
    run last trained on (its latest provenance record's sha256), unless `data_changed`
    (train.py --data-changed), which only warns."""
    records = state.get("provenance") or []
    recorded = records[-1]["data_sha256"] if records else {}
    changed = [split for split, digest in recorded.items()
               if corpus.sha256.get(split) not in (None, digest)]
    if not changed:
        return
    what = f"the {' and '.join(changed)} file{'s' if len(changed) > 1 else ''} of {corpus.path}"
    if not data_changed:
        raise CheckpointError(f"{what} changed since {resume} last trained on them "
                              f"(sha256 {corpus.sha256[changed[0]][:12]}... now, "
                              f"{recorded[changed[0]][:12]}... then); resuming on other data "
                              "makes another run than this one: pass --data-changed to "
                              "continue anyway")
    print(f"warning: {what} changed since the run last trained on them; continuing as asked "
          "(--data-changed), the run is no longer the one it was (its provenance records "
          "both)")


def check_not_behind(resume, state, model_path, state_path):
    """Refuse to resume `state` (read from the file `resume`, a backup of an earlier state,
    say) over files that a later point of the same run wrote at its --save path: the
    resumed run would replace that newer state, its metrics rows and a better model. The
    run's own state file is its latest (a best model newer than it: a failed write since)."""
    if os.path.abspath(resume) == os.path.abspath(state_path):
        return
    newer = []
    if os.path.exists(state_path):
        saved = quietly(load, state_path, kind="state")
        if saved is not None and (saved.get("steps", 0), saved["epoch"]) > (
                state.get("steps", 0), state["epoch"]):
            newer.append(f"{state_path} (after epoch {saved['epoch']})")
    model = quietly(load, model_path, kind="model") if os.path.exists(model_path) else None
    if model is not None and model["epoch"] > state["epoch"]:
        newer.append(f"{model_path} (the best model, of epoch {model['epoch']})")
    if newer:
        raise CheckpointError(
            f"{resume} stopped after epoch {state['epoch']}, but the run has gone further: "
            f"{', '.join(newer)}; resuming would replace what it wrote since. Resume from "
            f"{state_path}, or move the newer files away first")


def quietly(read, *args, **kwargs):
    """`read(*args, **kwargs)`, or None when it finds no readable checkpoint."""
    try:
        return read(*args, **kwargs)
    except CheckpointError:
        return None


def load_model(path, device="cpu"):
    """(model in eval mode on `device`, its Vocabulary, the checkpoint dict)."""
    checkpoint = load(path, kind="model")
    return build(path, checkpoint).to(device).eval(), Vocabulary(checkpoint["vocab"]), checkpoint


def check_vocabulary(checkpoint_path, vocab_words, corpus):
    """Refuse to continue or fine-tune on a corpus whose vocabulary differs."""
    if vocab_words != corpus.dictionary.idx2word:
        raise CheckpointError(
            f"{checkpoint_path} was trained on a {len(vocab_words):,}-word vocabulary that "
            f"differs from that of {corpus.path} ({len(corpus.dictionary):,} words); "
            "pass the --data the checkpoint was trained on")


# --- Provenance: where a trained model came from ------------------------------------------
#
# The command, the repository commit, the torch and CUDA versions, the device, the date and
# the sha256 of the data files. A run records one entry when it starts and one more each
# time it is resumed; checkpoints, the metrics CSV and the JSON summary all carry the list,
# as plain strings and dicts.

REPO = os.path.dirname(os.path.abspath(__file__))
PROVENANCE_KEYS = ("command", "date", "commit", "torch", "cuda", "device", "host", "data",
                   "data_sha256")
ADDED_PROVENANCE_KEYS = ("processes",)  # recorded since torchrun runs exist; older lack them


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


def provenance_record(command, device, device_name, corpus, processes="1 process"):
    """One entry: this process's command line (a string), device (and `device_name`,
    devices.describe_device's), processes (under torchrun, distributed.Group.describe's) and
    data."""
    name = device_name
    return dict(
        command=command, processes=processes,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        commit=git_commit(), torch=str(torch.__version__), cuda=str(torch.version.cuda or "none"),
        device=name if device.type == "cuda" else f"{cpu_name()}, {name}",
        host=socket.gethostname(), data=os.path.abspath(corpus.path),
        data_sha256=dict(corpus.sha256))


def describe_provenance(entries):
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
