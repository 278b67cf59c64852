"""train.py: train the baseline LSTM or AWD-LSTM language model with truncated BPTT.

    python train.py --model awd                      # the paper's WikiText-2 recipe, NT-ASGD
    python train.py --model lstm                     # the PyTorch example's recipe
    python train.py --model awd --resume checkpoints/awd.state.pt
    python train.py --model awd --finetune checkpoints/awd.pt

For --save checkpoints/awd.pt a run writes the best model so far (awd.pt), the latest
training state (awd.state.pt, written after every epoch and on Ctrl-C) and one metrics
row per epoch (awd.csv). Ctrl-C or SIGTERM stops after the current batch, saves the state
and tests the best model; --resume then continues exactly where the run stopped.
"""

import argparse
import csv
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import checkpoint
from checkpoint import CheckpointError
from data import Corpus, CorpusError, batchify, get_batch
from model import build_model, count_parameters, detach_hidden, map_hidden

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "wikitext-2")

# Each preset is the full recipe; any flag overrides its entry.
PRESETS = {
    # Merity et al. (2017), WikiText-2.
    "awd": dict(emsize=400, nhid=1150, nlayers=3, dropout=0.4, dropouth=0.2, dropouti=0.65,
                dropoute=0.1, wdrop=0.5, tied=True, lr=30.0, clip=0.25, epochs=750,
                batch_size=80, bptt=70, variable_bptt=True, alpha=2.0, beta=1.0,
                wdecay=1.2e-6, schedule="ntasgd", nonmono=5, seed=1882),
    # PyTorch word-language-model example, "medium" model: SGD, lr / 4 on a plateau.
    "lstm": dict(emsize=650, nhid=650, nlayers=2, dropout=0.5, tied=True, lr=20.0,
                 clip=0.25, epochs=40, batch_size=20, bptt=35, variable_bptt=False,
                 alpha=0.0, beta=0.0, wdecay=0.0, schedule="anneal", nonmono=5, seed=1111),
}
COMMON = dict(eval_batch_size=10, test_batch_size=1)
ARCHITECTURE = ("emsize", "nhid", "nlayers", "dropout", "dropouth", "dropouti", "dropoute",
                "wdrop", "tied")
AWD_ONLY = ("dropouth", "dropouti", "dropoute", "wdrop")


class SettingsError(ValueError):
    """Flags that do not make a valid run."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss)."""


# --- Command line ------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train an LSTM language model (baseline or AWD-LSTM) with truncated BPTT.",
        epilog="Defaults in brackets are the presets: awd = Merity et al.'s WikiText-2 "
               "recipe, lstm = the PyTorch example's. Every flag overrides its preset entry.")

    def preset(name, kind, help):
        shown = ", ".join(f"{m}: {PRESETS[m][name]}" for m in PRESETS if name in PRESETS[m])
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{help} [{shown}]")

    p.add_argument("--model", choices=PRESETS, default=None,
                   help="which model and recipe (default awd; with --resume or --finetune, "
                        "the checkpoint's)")
    p.add_argument("--data", default=None,
                   help="corpus directory (default: data/wikitext-2 beside this script)")
    preset("emsize", int, "embedding size")
    preset("nhid", int, "hidden units per LSTM layer")
    preset("nlayers", int, "LSTM layers")
    preset("dropout", float, "dropout on the last layer's output (and on the embedding "
                             "and between layers for lstm)")
    preset("dropouth", float, "locked dropout between LSTM layers (awd)")
    preset("dropouti", float, "locked dropout on the embedding output (awd)")
    preset("dropoute", float, "embedding dropout: whole word types (awd)")
    preset("wdrop", float, "DropConnect on the hidden-to-hidden matrices (awd)")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="tie decoder and embedding weights [awd: True, lstm: True]")
    preset("lr", float, "SGD learning rate")
    preset("clip", float, "gradient clipping (total norm)")
    preset("epochs", int, "epochs to train (the upper limit when fine-tuning)")
    preset("batch_size", int, "training batch size")
    preset("bptt", int, "BPTT length")
    p.add_argument("--variable-bptt", dest="variable_bptt", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="random BPTT length per batch, lr scaled to match [awd: True, "
                        "lstm: False]")
    preset("alpha", float, "activation regularisation (AR) weight")
    preset("beta", float, "temporal activation regularisation (TAR) weight")
    preset("wdecay", float, "weight decay")
    p.add_argument("--schedule", choices=("ntasgd", "anneal"), default=None,
                   help="ntasgd: switch to weight averaging when validation stalls; anneal: "
                        "divide lr by 4 when validation does not improve [awd: ntasgd, "
                        "lstm: anneal]")
    preset("nonmono", int, "NT-ASGD non-monotone interval")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=None,
                   help=f"validation batch size [{COMMON['eval_batch_size']}]")
    p.add_argument("--test-batch-size", dest="test_batch_size", type=int, default=None,
                   help=f"test batch size [{COMMON['test_batch_size']}]")
    preset("seed", int, "random seed")
    p.add_argument("--save", default=None,
                   help="best-model checkpoint path (default checkpoints/<model>.pt; "
                        "<model>-finetune.pt when fine-tuning)")
    p.add_argument("--resume", metavar="STATE",
                   help="continue a run exactly from its training state (<save>.state.pt)")
    p.add_argument("--finetune", metavar="CHECKPOINT",
                   help="fine-tune a trained model: restart from its averaged weights in "
                        "averaging mode, stop at the first non-monotone trigger")
    p.add_argument("--overwrite", action="store_true",
                   help="let a new run replace existing checkpoints at --save")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default auto: CUDA when available, else CPU)")
    p.add_argument("--max-batches", dest="max_batches", type=int, default=None,
                   help="cap the training batches per epoch (smoke runs)")
    p.add_argument("--log-interval", dest="log_interval", type=int, default=50,
                   help="batches between progress-bar updates (default 50)")
    return p.parse_args(argv)


def resolve_settings(args):
    """The run's full settings: a preset (fresh run), the saved run (--resume) or the trained
    model's run (--finetune), with the flags given on the command line on top."""
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in set(PRESETS["awd"]) | set(COMMON) | {"model", "data"}}
    if args.resume and args.finetune:
        raise SettingsError("--resume and --finetune exclude each other")

    if args.resume:
        state = checkpoint.load(args.resume, kind="state")
        settings = dict(state["args"])
        if args.save and args.save != settings["save"]:
            raise SettingsError(f"--save cannot change when resuming; the run keeps writing "
                                f"to {settings['save']}")
        for name, value in given.items():
            if name not in ("epochs", "data") and value != settings.get(name):
                raise SettingsError(
                    f"--{name} cannot change when resuming ({args.resume} was run with "
                    f"{settings.get(name)}); only --epochs, --data and the run options "
                    "(--device, --max-batches, --log-interval) can")
        settings.update({k: given[k] for k in ("epochs", "data") if k in given})
        return settings, state

    if args.finetune:
        trained = checkpoint.load(args.finetune, kind="model")
        settings = dict(trained["args"])
        for name in ("model",) + ARCHITECTURE:
            if name in given and given[name] != settings.get(name):
                raise SettingsError(
                    f"--{name} cannot change when fine-tuning: {args.finetune} has "
                    f"{name}={settings.get(name)}")
        settings.update(given)
        settings["finetune"] = args.finetune
        stem, ext = os.path.splitext(args.finetune)
        settings["save"] = args.save or f"{stem}-finetune{ext or '.pt'}"
        return settings, trained

    model = given.get("model", "awd")
    for name in AWD_ONLY:
        if model != "awd" and name in given:
            raise SettingsError(f"--{name} applies to --model awd only")
    settings = {**PRESETS[model], **COMMON, **given, "model": model, "finetune": None}
    settings.setdefault("data", DEFAULT_DATA)
    settings["save"] = args.save or os.path.join("checkpoints", f"{model}.pt")
    return settings, None


def check_settings(s, max_batches, log_interval):
    positive = ["emsize", "nhid", "nlayers", "epochs", "batch_size", "eval_batch_size",
                "test_batch_size", "nonmono", "lr", "clip"]
    for name in positive:
        if not s[name] > 0:
            raise SettingsError(f"--{name} must be positive (got {s[name]})")
    if s["bptt"] < 2:
        raise SettingsError(f"--bptt must be at least 2 (got {s['bptt']})")
    for name in ("dropout",) + AWD_ONLY:
        if name in s and not 0 <= s[name] < 1:
            raise SettingsError(f"--{name} must be in [0, 1) (got {s[name]})")
    for name in ("alpha", "beta", "wdecay"):
        if s[name] < 0:
            raise SettingsError(f"--{name} must not be negative (got {s[name]})")
    if max_batches is not None and max_batches < 1:
        raise SettingsError(f"--max-batches must be at least 1 (got {max_batches})")
    if log_interval < 1:
        raise SettingsError(f"--log-interval must be at least 1 (got {log_interval})")


def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA device is available to PyTorch; "
                            "use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# --- Pieces of the training loop ---------------------------------------------------------

def sample_seq_len(rng, bptt):
    """AWD-LSTM's variable BPTT: around bptt (p = 0.95) or bptt / 2, sd 5, at least 5."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return max(5, int(rng.normal(base, 5)))


def activation_regularization(out, alpha, beta):
    """AR: alpha * mean(h^2) of the dropped last layer; TAR: beta * mean((h_t+1 - h_t)^2)
    of the undropped one."""
    penalty = 0.0
    if alpha:
        penalty = penalty + alpha * out.dropped_output.pow(2).mean()
    if beta and out.raw_output.size(0) > 1:
        penalty = penalty + beta * (out.raw_output[1:] - out.raw_output[:-1]).pow(2).mean()
    return penalty


def train_step(model, optimizer, inputs, targets, hidden, lr, s):
    """One truncated-BPTT step: forward from `hidden` (detached here), cross-entropy plus
    AR/TAR, backward, clipping, SGD at `lr`. Returns the cross-entropy (a tensor, so the
    caller decides when to synchronise) and the new hidden state."""
    out = model(inputs, detach_hidden(hidden))
    loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    (loss + activation_regularization(out, s["alpha"], s["beta"])).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss.detach(), out.hidden


def should_start_averaging(history, valid_loss, nonmono):
    """NT-ASGD's trigger (the paper's Algorithm 1): with `history` the validation losses of
    the epochs before this one, fire when there are more than `nonmono` of them and this
    epoch's loss is worse than the best one from before the last `nonmono` epochs."""
    return len(history) > nonmono and valid_loss > min(history[:-nonmono])


@torch.no_grad()
def evaluate(model, data, batch_size, bptt, progress=None, on_segment=None):
    """Mean negative log-likelihood per target token of `data` (1-D token ids), exact: every
    target of the batchified split is scored once, summed in float64. `on_segment`, when
    given, also receives each window's target log-probabilities (T, batch), last-layer
    states (T, batch, features) and targets (T, batch): the cache pointer reads them."""
    model.eval()
    device = next(model.parameters()).device
    source = batchify(data, batch_size).to(device)
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    bar = tqdm(range(0, source.size(0) - 1, bptt), desc=progress, leave=False,
               disable=progress is None or not sys.stderr.isatty())  # no bar in log files
    for n, i in enumerate(bar):
        inputs, targets = get_batch(source, i, bptt)
        out = model(inputs, hidden)
        hidden = out.hidden
        logp = torch.log_softmax(out.logits.float(), dim=-1).gather(
            2, targets.unsqueeze(2)).squeeze(2)
        total -= logp.double().sum()
        if on_segment is not None:
            on_segment(logp, out.raw_output, targets)
        if not bar.disable and n % 20 == 0:  # running perplexity: a sync, on terminals only
            scored = (n * bptt + len(inputs)) * batch_size
            bar.set_postfix(ppl=f"{ppl(total.item() / scored):.2f}")
    return total.item() / ((source.size(0) - 1) * batch_size)


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a request to stop after the current batch;
    a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after the current batch; the training state will be saved "
                   "(Ctrl-C again aborts at once)")


def write_metrics(path, rows):
    """The per-epoch CSV, rewritten whole from the run's state so resumes never duplicate."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "seconds", "tokens_per_s",
                                               "train_loss", "train_ppl", "valid_loss",
                                               "valid_ppl", "lr", "mode", "event"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def ppl(loss):
    return math.exp(loss) if loss < 700 else float("inf")


# --- The run -----------------------------------------------------------------------------

class Trainer:
    """One training run: model, optimizer, NT-ASGD average and the bookkeeping that a
    training state saves and restores."""

    def __init__(self, settings, corpus, device, weights=None):
        self.s = settings
        self.corpus = corpus
        self.device = device
        s = settings
        config = dict(model=s["model"], ntoken=len(corpus.dictionary),
                      **{k: s[k] for k in ARCHITECTURE if k in s})
        torch.manual_seed(s["seed"])
        self.model = build_model(config).to(device)
        if weights is not None:  # fine-tuning starts from a trained model's weights
            self.model.load_state_dict(weights)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=s["lr"],
                                         weight_decay=s["wdecay"])
        self.rng = np.random.default_rng(s["seed"])  # variable BPTT lengths
        self.train_data = batchify(corpus.train, s["batch_size"]).to(device)
        self.averaged = None  # AveragedModel from the NT-ASGD switch (or fine-tuning) on
        self.lr = s["lr"]
        self.epoch = 0  # epochs completed
        self.position = None  # where an interrupted epoch stopped
        self.valid_history = []  # validation losses of completed epochs
        self.best_valid_loss = math.inf
        self.metrics = []
        self.done = False  # fine-tuning ended at its trigger
        if s["finetune"]:
            self.averaged = AveragedModel(self.model)

    @property
    def eval_model(self):
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def model_path(self):
        return self.s["save"]

    # Checkpoints ---------------------------------------------------------------------------

    def model_checkpoint(self, valid_loss):
        return dict(format=checkpoint.FORMAT, version=checkpoint.VERSION, kind="model",
                    config=self.model.config, vocab=self.corpus.dictionary.idx2word,
                    args=self.s, model=self.eval_model.state_dict(), epoch=self.epoch + 1,
                    valid_loss=valid_loss, valid_ppl=ppl(valid_loss))

    def state(self):
        rng = dict(torch=torch.get_rng_state(), numpy=self.rng.bit_generator.state,
                   cuda=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [])
        return dict(format=checkpoint.FORMAT, version=checkpoint.VERSION, kind="state",
                    config=self.model.config, vocab=self.corpus.dictionary.idx2word,
                    args=self.s, model=self.model.state_dict(),
                    averaged=self.averaged.state_dict() if self.averaged is not None else None,
                    optimizer=self.optimizer.state_dict(), lr=self.lr, epoch=self.epoch,
                    position=self.position, valid_history=self.valid_history,
                    best_valid_loss=self.best_valid_loss, metrics=self.metrics,
                    done=self.done, rng=rng)

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        if state["averaged"] is not None:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(state["averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr, self.epoch, self.valid_history = (
            state["lr"], state["epoch"], state["valid_history"])
        self.best_valid_loss, self.metrics, self.done = (
            state["best_valid_loss"], state["metrics"], state["done"])
        self.position = state["position"]
        if self.position is not None:
            self.position["hidden"] = map_hidden(lambda t: t.to(self.device),
                                                 self.position["hidden"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.rng.bit_generator.state = state["rng"]["numpy"]

    def save_state(self):
        checkpoint.save(checkpoint.state_path(self.model_path), self.state())

    # Training ------------------------------------------------------------------------------

    def train_epoch(self, stop, max_batches, log_interval):
        """One pass over the training split (or what is left of an interrupted one).
        Returns the mean training loss, or None when stopped by a signal."""
        s, model, data = self.s, self.model, self.train_data
        model.train()
        if self.position is None:
            self.position = dict(index=0, batches=0, loss_sum=0.0, tokens=0, seconds=0.0,
                                 hidden=model.init_hidden(s["batch_size"]))
        pos = self.position
        hidden, i, batches = pos["hidden"], pos["index"], pos["batches"]
        loss_sum = torch.tensor(pos["loss_sum"], dtype=torch.float64, device=self.device)
        tokens, started = pos["tokens"], time.time() - pos["seconds"]
        mean_len = s["bptt"] * (0.975 if s["variable_bptt"] else 1)  # 0.95 * bptt + 0.05 * bptt/2
        expected = math.ceil((data.size(0) - 2) / mean_len)
        total = min(expected, max_batches) if max_batches else expected
        bar = tqdm(total=total, initial=batches, desc=f"epoch {self.epoch + 1}", leave=False,
                   unit="batch", dynamic_ncols=True, disable=not sys.stderr.isatty())
        at_end = False
        while i < data.size(0) - 2 and (max_batches is None or batches < max_batches):
            seq_len = sample_seq_len(self.rng, s["bptt"]) if s["variable_bptt"] else s["bptt"]
            inputs, targets = get_batch(data, i, seq_len)
            lr = self.lr * inputs.size(0) / s["bptt"]  # a short window takes a smaller step
            loss, hidden = train_step(model, self.optimizer, inputs, targets, hidden, lr, s)
            if self.averaged is not None:
                self.averaged.update_parameters(model)
            loss_sum += loss.double() * targets.numel()
            tokens += targets.numel()
            i += inputs.size(0)
            batches += 1
            bar.update(1)
            at_end = i >= data.size(0) - 2 or batches == max_batches
            if batches % log_interval == 0 or at_end or stop.requested:
                mean_loss = loss_sum.item() / tokens  # the one host sync, every log_interval
                if not math.isfinite(mean_loss):
                    bar.close()
                    raise TrainingError(
                        f"the training loss became {mean_loss} in epoch {self.epoch + 1} "
                        f"(batch {batches}); nothing was saved from this epoch and "
                        f"{self.model_path} still holds the last good model. Try a lower "
                        "--lr or --clip")
                bar.set_postfix(loss=f"{mean_loss:.3f}", ppl=f"{ppl(mean_loss):.1f}",
                                lr=f"{self.lr:g}",
                                tok_s=f"{tokens / max(time.time() - started, 1e-9):,.0f}")
            if stop.requested:
                break
        bar.close()
        self.position = dict(index=i, batches=batches, loss_sum=loss_sum.item(),
                             tokens=tokens, seconds=time.time() - started,
                             hidden=detach_hidden(hidden))
        if stop.requested and not at_end:
            return None
        return self.position["loss_sum"] / self.position["tokens"]

    def end_epoch(self, train_loss):
        """Validate, save the best model, apply the schedule, record the epoch."""
        s = self.s
        seconds, epoch_lr = self.position["seconds"], self.lr
        valid_loss = evaluate(self.eval_model, self.corpus.valid, s["eval_batch_size"],
                              s["bptt"], progress="validating")
        if not math.isfinite(valid_loss):
            raise TrainingError(
                f"the validation loss became {valid_loss} after epoch {self.epoch + 1}; "
                f"nothing was saved from this epoch and {self.model_path} still holds "
                "the last good model. Try a lower --lr or --clip")
        mode, event = ("ASGD" if self.averaged is not None else "SGD"), ""
        if valid_loss < self.best_valid_loss:
            self.best_valid_loss = valid_loss
            checkpoint.save(self.model_path, self.model_checkpoint(valid_loss))
            event = "saved"
        trigger = should_start_averaging(self.valid_history, valid_loss, s["nonmono"])
        if s["finetune"] and trigger:
            self.done = True
            event = "fine-tuning done"
        elif s["schedule"] == "ntasgd" and self.averaged is None and trigger:
            self.averaged = AveragedModel(self.model)  # averages the iterates from here on
            event = "switch to ASGD"
        elif s["schedule"] == "anneal" and event != "saved":
            self.lr /= 4
            event = "lr / 4"
        self.valid_history.append(valid_loss)
        tokens_per_s = self.position["tokens"] / max(seconds, 1e-9)
        row = dict(epoch=self.epoch + 1, seconds=round(seconds, 2),
                   tokens_per_s=round(tokens_per_s),
                   train_loss=round(train_loss, 5), train_ppl=round(ppl(train_loss), 3),
                   valid_loss=round(valid_loss, 5), valid_ppl=round(ppl(valid_loss), 3),
                   lr=epoch_lr, mode=mode, event=event)
        self.metrics.append(row)
        self.epoch += 1
        self.position = None
        tqdm.write(f"epoch {self.epoch:4d} | {seconds:8.1f} s | {tokens_per_s:8,.0f} tok/s "
                   f"| train ppl {ppl(train_loss):9.2f} "
                   f"| valid ppl {ppl(valid_loss):9.2f} | lr {row['lr']:g} | {mode}"
                   + (f" | {event}" if event else ""))
        if event == "switch to ASGD":
            tqdm.write(f"switching to ASGD at epoch {self.epoch}")


def report_test_perplexity(trainer, device):
    """Test perplexity of the best checkpoint, at the test batch size (1 in the paper)."""
    path = trainer.model_path
    if not os.path.exists(path):
        print("no epoch has finished yet, so there is no best model to test")
        return
    model, _, saved = checkpoint.load_model(path, device)
    s = trainer.s
    test_loss = evaluate(model, trainer.corpus.test, s["test_batch_size"], s["bptt"],
                         progress="testing")
    print(f"best model ({path}, epoch {saved['epoch']}): valid ppl {saved['valid_ppl']:.2f} "
          f"| test ppl {ppl(test_loss):.2f} (batch size {s['test_batch_size']})")


def train(args):
    settings, loaded = resolve_settings(args)
    check_settings(settings, args.max_batches, args.log_interval)
    if args.model and args.model != settings["model"]:
        raise SettingsError(f"--model {args.model} does not match the checkpoint's model "
                            f"{settings['model']}")
    device = pick_device(args.device)
    corpus = Corpus(settings["data"])
    if loaded is not None:
        checkpoint.check_vocabulary(args.resume or args.finetune, loaded["vocab"], corpus)

    model_path, state_file = settings["save"], checkpoint.state_path(settings["save"])
    if not args.resume and not args.overwrite:
        for path in (model_path, state_file):
            if os.path.exists(path):
                raise SettingsError(
                    f"{path} exists and a new run would replace it; continue that run "
                    f"with --resume {state_file}, choose another --save, or pass --overwrite")

    trainer = Trainer(settings, corpus, device,
                      weights=loaded["model"] if args.finetune else None)
    if args.resume:
        trainer.load_state(loaded)

    n_params = count_parameters(trainer.model)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{threads} thread{'s' if threads > 1 else ''}"
    print(f"device: {device.type} ({where}) | model: {settings['model']}, "
          f"{n_params:,} parameters | vocabulary {len(corpus.dictionary):,} | "
          f"train {len(corpus.train):,} tokens")
    if device.type == "cpu" and n_params > 10_000_000:
        print("note: on a CPU a model this size trains slowly: the full AWD-LSTM ran at about "
              "1,000 tokens/s on a 2-core machine,\n  35 minutes per WikiText-2 epoch, so the "
              "750-epoch recipe takes weeks. A run that finishes in minutes:\n  python "
              "train.py --model awd --emsize 200 --nhid 400 --batch_size 20 --epochs 2 "
              "--max-batches 200 --save checkpoints/awd-small.pt")
    if args.resume:
        print(f"resuming {args.resume} after epoch {trainer.epoch}"
              + (" (mid-epoch)" if trainer.position else ""))
    if args.finetune:
        print(f"fine-tuning {args.finetune} in averaging mode; writing {model_path}")

    metrics_path = os.path.splitext(model_path)[0] + ".csv"
    with StopRequest() as stop:
        while trainer.epoch < settings["epochs"] and not trainer.done and not stop.requested:
            train_loss = trainer.train_epoch(stop, args.max_batches, args.log_interval)
            if train_loss is not None:
                trainer.end_epoch(train_loss)
            trainer.save_state()
            write_metrics(metrics_path, trainer.metrics)
        if stop.requested:
            print(f"stopped; training state saved to {state_file} "
                  f"(continue with: python train.py --resume {state_file})")
        elif trainer.epoch >= settings["epochs"] or trainer.done:
            print(f"finished after {trainer.epoch} epochs")
        report_test_perplexity(trainer, device)


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except (CorpusError, CheckpointError, SettingsError, TrainingError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # a second Ctrl-C
        print("\naborted; checkpoints on disk are intact (every write is atomic)",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
