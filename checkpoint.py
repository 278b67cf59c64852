"""checkpoint.py: write and read this project's checkpoints, atomically and as plain data.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so that it loads with
torch.load(..., weights_only=True) on any PyTorch version. Two kinds, both with
    format "lstm-lm", version, kind, config (the model's plain-dict configuration),
    vocab (list of words, id order), args (the training settings)
- kind "model": `model` holds the weights to evaluate and sample from (the averaged
  weights once NT-ASGD has switched); written by train.py at `--save`.
- kind "state": everything train.py needs to continue a run exactly (raw and averaged
  weights, optimizer, epoch and position, validation history, RNG states, metrics);
  written beside the model file as <save>.state.pt.
"""

import os
import pickle
import zipfile

import torch

from data import Vocabulary
from model import build_model

FORMAT = "lstm-lm"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and says why."""


def pack(kind, config, vocab_words, settings, **contents):
    """A checkpoint of `kind` ("model" or "state"): the header every checkpoint carries (the
    model's configuration, the vocabulary, the run's settings) plus `contents`."""
    return dict(format=FORMAT, version=VERSION, kind=kind, config=config,
                vocab=list(vocab_words), args=dict(settings), **contents)


def state_path(model_path):
    """Where the training state of the run saving its best model at `model_path` goes."""
    stem, _ = os.path.splitext(model_path)
    return stem + ".state.pt"


def save(path, checkpoint):
    """Write atomically: to a temporary file beside `path`, flushed to disk, then renamed
    over it, so an interrupted write never leaves a broken or missing checkpoint."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path, kind=None):
    """A checkpoint of this project as a dict on the CPU; CheckpointError if it is not one."""
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
    if kind == "model" and checkpoint["kind"] == "state":
        raise CheckpointError(
            f"{path} is a training state, for train.py --resume; pass the model checkpoint "
            "saved beside it (the --save path, e.g. checkpoints/awd.pt)")
    if kind == "state" and checkpoint["kind"] != "state":
        raise CheckpointError(
            f"{path} is a model checkpoint without training state; resume from "
            f"{state_path(path)}, or fine-tune it with --finetune {path}")
    return checkpoint


def load_model(path, device="cpu"):
    """(model in eval mode on `device`, its Vocabulary, the checkpoint dict)."""
    checkpoint = load(path, kind="model")
    try:
        model = build_model(checkpoint["config"])
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the stored configuration "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), Vocabulary(checkpoint["vocab"]), checkpoint


def check_vocabulary(checkpoint_path, vocab_words, corpus):
    """Refuse to continue or fine-tune on a corpus whose vocabulary differs."""
    if vocab_words != corpus.dictionary.idx2word:
        raise CheckpointError(
            f"{checkpoint_path} was trained on a {len(vocab_words):,}-word vocabulary that "
            f"differs from that of {corpus.path} ({len(corpus.dictionary):,} words); "
            "pass the --data the checkpoint was trained on")
