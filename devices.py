"""devices.py: what a script runs on: the device (chosen, named, its numeric precision, out
of its memory) and, under torchrun, the group of processes that share one training run.

torchrun starts train.py once per process, with RANK, LOCAL_RANK and WORLD_SIZE in the
environment. The processes share one global batch: each takes its own block of the
batchified split's columns, DistributedDataParallel averages their gradients, so every
process holds the same weights after every step. What one process may learn before the
others (a signal, a passed deadline, a due save) they decide together at sync points of
the loop; the main process (rank 0) alone writes files and prints.

`Group` is that set of processes. For a run without torchrun it is a single process, and
every collective below returns its input untouched: the one-process path is the plain one.
`StopRequest` turns the signals that stop a run (Ctrl-C, SIGTERM, SIGHUP) into a request
that the loop's sync points share.

    group, device = start("auto")       # reads torchrun's environment; NCCL or gloo
    group.columns(80)                   # this process's columns of a batch of 80
    group.sum(tensor)                   # summed over the processes, in place
    set_precision("bf16", device)       # --precision, as every script applies it
    check_bf16(device, model, 80)       # bf16: the model's LSTMs run here, or why not
"""

import contextlib
import inspect
import math
import os
import signal
import stat
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import LSTMLayer
from settings import BY_NAME, SettingsError


# --- The device ---------------------------------------------------------------------------

def pick_device(name):
    """torch.device for --device auto|cpu|cuda (auto: CUDA when PyTorch sees a GPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA device is available to PyTorch; "
                            "use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def describe_device(device):
    """"NVIDIA H100 80GB HBM3" or "2 threads": what the run's speed depends on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{threads} thread{'s' if threads > 1 else ''}"


def out_of_memory(error):
    """Whether `error` (a MemoryError or RuntimeError) says the device ran out of memory."""
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(error) or "out of memory" in str(error))


PRECISIONS = BY_NAME["precision"].type  # the choices of --precision


def set_precision(precision, device, training=True):
    """Apply --precision to this process, the same way in every script:
        torch  PyTorch's own defaults: float32, matmuls in IEEE float32, cuDNN's LSTMs
               allowed TensorFloat-32 (on GPUs that have it)
        fp32   IEEE float32 everywhere
        tf32   TensorFloat-32 in matmuls and cuDNN's LSTMs (NVIDIA GPUs only)
        bf16   training steps under bfloat16 autocast (trainer.train_step; the LSTMs in
               bfloat16 too, model.LSTMLayer), matmuls outside autocast in IEEE float32;
               cuDNN's LSTMs keep PyTorch's default, as under torch (see below)
    On the CPU all four compute float32 parts alike (IEEE). Evaluation and sampling
    (`training` False) always run in float32 and take only the option's float32 math, so a
    checkpoint trained with any option is read anywhere; training tf32 on a CPU raises
    SettingsError (check_bf16 says whether a device runs bf16 LSTMs).

    PyTorch has one switch for the math of cuDNN's LSTMs, whatever their dtype: with TF32
    off, its RNN descriptor (aten/src/ATen/cudnn/Descriptors.h) asks cuDNN for FMA math,
    without tensor cores, for every input that is not float16, bfloat16 included. So bf16
    leaves the switch on, as PyTorch's default does; cuDNN's default math then allows
    tensor cores for bfloat16 LSTMs (and validation's float32 LSTMs may use TF32, as under
    torch). The switches are set through PyTorch's older setters, which keep its newer
    per-operator flags (torch >= 2.9) in step: setting one of those alone leaves torch's
    own TF32 getters raising."""
    if training and precision == "tf32" and device.type != "cuda":
        raise SettingsError("--precision tf32 needs an NVIDIA GPU (TF32 is a tensor-core "
                            "format); on the CPU use --precision fp32")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision in ("torch", "tf32", "bf16")


def float32_math():
    """(matmuls, cuDNN's LSTMs): how this process computes float32 on CUDA, "ieee" or
    "tf32" for each (set_precision sets both)."""
    return tuple("tf32" if on else "ieee" for on in (torch.backends.cuda.matmul.allow_tf32,
                                                     torch.backends.cudnn.allow_tf32))


def check_bf16(device, model, batch_size):
    """Run one bfloat16 training step of an LSTM layer of each of `model`'s shapes (input
    and hidden size, `batch_size` columns, on `device`) the way model.LSTMLayer runs its
    layers under bf16, with the math that set_precision chose, or say why this device
    cannot. The model's own shapes, because cuDNN picks its algorithm by them: PyTorch
    sends narrow LSTMs (hidden size up to 192 forward, 128 backward) to a persistent
    small-hidden algorithm and wider ones to the standard one (use_rnn_persist_small_h in
    aten/src/ATen/native/cudnn/RNN.cpp), so a tiny probe would pass for the wrong one."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                            "support bfloat16; use --precision torch (or fp32, tf32)")
    shapes = {(rnn.lstm.input_size, rnn.lstm.hidden_size) for rnn in model.rnns}
    try:
        with torch.random.fork_rng(devices=[]):  # (the probes' weights leave the run's
            for input_size, hidden_size in sorted(shapes):  # generator as it was)
                probe = LSTMLayer(input_size, hidden_size).to(device).train()
                zeros = torch.zeros(1, batch_size, hidden_size, device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    output, _ = probe(torch.zeros(2, batch_size, input_size, device=device),
                                      (zeros, zeros))
                output.float().sum().backward()
                if output.dtype != torch.bfloat16:
                    raise RuntimeError(f"the LSTM computed in {output.dtype}")
    except RuntimeError as e:
        reason = str(e).strip().split(". ")[0][:160]
        raise SettingsError(f"--precision bf16: PyTorch cannot run an LSTM in bfloat16 on this "
                            f"{device.type} ({reason}); use --precision torch here") from None


# --- The processes of a run -------------------------------------------------------------

def environment_rank():
    """This process's rank under torchrun, 0 otherwise (known before any set-up)."""
    return int(os.environ.get("RANK", 0))


@contextlib.contextmanager
def only_main_prints():
    """Under torchrun, send the standard output of every process but rank 0 nowhere: the
    main process speaks for all (standard error, where errors go, stays each one's own)."""
    if environment_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        yield


@dataclass(frozen=True)
class Group:
    rank: int = 0
    size: int = 1
    local_size: int = 1  # processes on this machine
    backend: str = "none"  # "nccl", "gloo", or "none" for a single process
    device: torch.device = torch.device("cpu")  # where collectives' tensors live
    torchrun: bool = False  # started by torchrun (even as its only process)

    @property
    def main(self):
        return self.rank == 0

    @property
    def machines(self):
        return self.size // self.local_size

    def describe(self):
        """"2 processes (gloo)": what the first line of a run under torchrun names."""
        if self.size == 1:
            return "1 process"
        where = f" on {self.machines} machines" if self.machines > 1 else ""
        return f"{self.size} processes{where} ({self.backend})"

    def columns(self, batch_size):
        """This process's block of the columns of a batch: split as evenly as they go, the
        first processes taking one more when batch_size does not divide (evaluation at batch
        1 leaves the others none). Training needs an even split (train.py checks it)."""
        start, stop = (math.ceil(batch_size * r / self.size) for r in (self.rank, self.rank + 1))
        return slice(start, stop)

    def sum(self, tensor):
        """`tensor` summed elementwise over the processes, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag):
        """Whether `flag` is true on any process."""
        if self.size == 1:
            return bool(flag)
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item())

    def broadcast(self, value):
        """The main process's `value` (any picklable object), on every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """Every process's `value`, as a list in rank order, on every process."""
        if self.size == 1:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def gather_columns(self, tensor):
        """The whole batch from every process's block of columns (dimension 1, as in a
        hidden state (layers, batch, features)): the inverse of `columns`."""
        if self.size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def random_states(self, device, numpy_rng):
        """What a training state saves of the random generators: this process's torch and
        GPU ones (that of the one GPU it uses; a host may have more) and `numpy_rng` (the
        BPTT lengths, one stream for all); under torchrun every process's torch and GPU
        ones too, since each draws its own dropout masks."""
        own = dict(torch=torch.get_rng_state(),
                   cuda=[torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])
        states = dict(own, numpy=numpy_rng.bit_generator.state)
        if self.size > 1:
            states["processes"] = self.gather(own)
        return states

    def restore_random_states(self, states, device, numpy_rng):
        """Set the generators from `states` (random_states's) when as many processes saved
        them as there are now; returns how many did (the caller reseeds otherwise)."""
        numpy_rng.bit_generator.state = states["numpy"]
        saved = states.get("processes") or [states]
        if len(saved) == self.size:
            own = saved[self.rank]
            torch.set_rng_state(own["torch"])
            if own["cuda"] and device.type == "cuda":
                torch.cuda.set_rng_state(own_cuda_state(own["cuda"], device), device)
        return len(saved)

    def stop_if_any_failed(self, error):
        """After a set-up in which a process may have failed (`error`, or None): raise on
        every process if any failed, so that none waits for the others forever. The main
        process raises a SettingsError that says what went wrong, once per distinct
        message; the others exit with status 1 and say nothing more."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        messages = self.gather(None if error is None else str(error))
        failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
        if not failed:
            return
        if not self.main:
            raise SystemExit(1)
        if len(failed) == self.size and len(set(messages)) == 1:
            raise SettingsError(messages[0])
        raise SettingsError("; ".join(f"process {rank} of {self.size}: {m}" for rank, m in failed))

    def wrap(self, module, find_unused_parameters=False):
        """`module` in DistributedDataParallel on several processes (its construction
        copies the main process's weights to the others), itself on one."""
        if self.size == 1:
            return module
        # The buffers (an adaptive softmax's word ranks) never change: no copy per step.
        # torch 2.13 renamed the switch; earlier versions know only the old name.
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel).parameters else
                          {"broadcast_buffers": False})
        return DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, **no_buffer_sync)


SINGLE = Group()  # a run without torchrun


def lost_peer(error):
    """What `error` (raised by a collective under torchrun) says of another process that
    went away, in a few words; None when it says something else. gloo reports a reset or
    closed connection, NCCL a backend error."""
    text = str(error)
    for sign in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                 "Socket closed"):
        if sign in text:
            return sign.lower()
    if isinstance(error, getattr(dist, "DistBackendError", ())) or "third_party/gloo" in text:
        return text.split("] ", 1)[-1].splitlines()[0][:120] if text else type(error).__name__
    return None


def own_cuda_state(saved, device):
    """This process's GPU generator state from a training state's list: one entry (the GPU
    the run used), or, in states written before that, one per GPU of the saving host."""
    if len(saved) == 1:
        return saved[0]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return saved[min(index, len(saved) - 1)]


def launch_command(group):
    """How a script is started to run on `group`'s processes: ["python"] or torchrun's
    command on as many machines and processes (rendezvous flags aside)."""
    if not group.torchrun:
        return ["python"]
    machines = ["--nnodes", str(group.machines)] if group.machines > 1 else ["--standalone"]
    return ["torchrun"] + machines + ["--nproc_per_node", str(group.local_size)]


@contextlib.contextmanager
def start(device_name):
    """Join torchrun's processes (when torchrun started this one) and pick this process's
    device: under torchrun with --device auto or cuda, the GPU numbered LOCAL_RANK on its
    machine. Yields (Group, torch.device); leaving the context leaves the process group."""
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ:
        yield SINGLE, pick_device(device_name)
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))  # (set by torchrun)
    device = pick_device(device_name)
    if device.type == "cuda":
        if local_size > torch.cuda.device_count():
            raise SettingsError(
                f"torchrun started {local_size} processes on this machine, which has "
                f"{torch.cuda.device_count()} GPUs; give --nproc_per_node at most "
                f"{torch.cuda.device_count()} (one process per GPU)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if size == 1:  # one process: the plain path, without collectives
        yield Group(torchrun=True), device
        return
    if (int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
            and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1"):
        print("note: torchrun started these processes again; if they hang here, torch's "
              "rendezvous store still holds the lost ones' addresses (pytorch/pytorch#135712): "
              "run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/torchrun.md)")
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield Group(rank, size, local_size, backend, device, torchrun=True), device
        dist.barrier()  # no process leaves while another may still talk to it
    finally:
        dist.destroy_process_group()


# --- Signals that stop a run ----------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, schedulers, hang-ups


@contextlib.contextmanager
def handling(signals, handler):
    """Handle `signals` with `handler` inside the block, as before it outside."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)


class StopRequest:
    """Turns the first Ctrl-C, SIGTERM or SIGHUP into a request to stop after the current
    batch (`when` says otherwise); a second one aborts at once."""

    def __init__(self, when="after the current batch"):
        self.requested = False
        self.when = when

    def __enter__(self):
        self.handlers = handling(STOP_SIGNALS, self.handle)
        self.handlers.__enter__()
        return self

    def __exit__(self, *exc):
        self.handlers.__exit__(*exc)

    def handle(self, signum, frame):
        if signum == signal.SIGHUP:
            leave_the_terminal()
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        again = "Ctrl-C again" if signum == signal.SIGINT else "another signal or a Ctrl-C"
        tqdm.write(f"stopping {self.when}; the training state will be saved ({again} aborts "
                   "at once)")


def leave_the_terminal():
    """After a hang-up the terminal is gone, and every write to it would fail (EIO): what
    was meant for it goes nowhere from now on, so that the run can still save and end."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:  # a terminal is a character device (isatty fails once it is gone)
            if stat.S_ISCHR(os.fstat(stream.fileno()).st_mode):
                os.dup2(nowhere, stream.fileno())
        except (OSError, ValueError):  # (closed, or no file behind it)
            pass
    os.close(nowhere)


def signals_as_ctrl_c():
    """Outside the epoch loop (where StopRequest takes them over), SIGTERM and SIGHUP end a
    run as Ctrl-C does: a KeyboardInterrupt, which train.main reports."""
    def interrupt(signum, frame):
        if signum == signal.SIGHUP:
            leave_the_terminal()
        raise KeyboardInterrupt

    return handling((signal.SIGTERM, signal.SIGHUP), interrupt)


def signals_ignored():
    """While a failed run says what is left of it: torchrun sends SIGTERM to every process
    as soon as one is lost, and it must not cut that message short."""
    return handling(STOP_SIGNALS, signal.SIG_IGN)
