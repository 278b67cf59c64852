"""distributed.py: the processes of one training run under torchrun, and what they agree on.

torchrun starts train.py once per process, with RANK, LOCAL_RANK and WORLD_SIZE in the
environment. The processes share one global batch: each takes its own block of the
batchified split's columns, DistributedDataParallel averages their gradients, so every
process holds the same weights after every step. What one process may learn before the
others (a signal, a budget's time running out, a due save) they decide together at sync
points of the epoch loop (SyncPoints); the main process (rank 0) alone
writes files and prints.

`Group` is that set of processes. For a run without torchrun it is a single process, and
every collective below returns its input untouched: the one-process path is the plain one.

    group, device = start("auto")       # reads torchrun's environment; NCCL or gloo
    group.columns(80)                   # this process's columns of a batch of 80
    group.sum(tensor)                   # summed over the processes, in place
    syncs = SyncPoints(group, batches, log_interval)
    agreed = syncs.agree(Report(...))   # at a sync point: the same numbers on every process
"""

import contextlib
import datetime
import inspect
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from devices import pick_device
from settings import SettingsError

SYNC_SECONDS = 5.0  # sync points come at least this often (and every --log-interval batches)


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
    if "Timed out" in text or "timed out" in text:  # (gloo's words for a wait past the timeout)
        return "no answer within --sync-timeout: it hangs or was stopped"
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
def start(device_name, timeout_minutes=5.0):
    """Join torchrun's processes (when torchrun started this one) and pick this process's
    device: under torchrun with --device auto or cuda, the GPU numbered LOCAL_RANK on its
    machine. A collective that waits longer than `timeout_minutes` for another process (one
    that hangs, or was stopped) fails, instead of gloo's default 30 minutes. Yields (Group,
    torch.device); leaving the context leaves the process group."""
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
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        yield Group(rank, size, local_size, backend, device, torchrun=True), device
        dist.barrier()  # no process leaves while another may still talk to it
    finally:
        dist.destroy_process_group()


# --- Sync points ----------------------------------------------------------------------------

@dataclass
class Report:
    """What one process brings to a sync point, and, from SyncPoints.agree, what all of them
    agreed on: the loss sum and tokens of the epoch so far, summed; seconds per batch since
    the last sync point and a budget's share of training time passed (progress.Clock),
    averaged (the same numbers on every process); and the requests that any process made:
    stop (a signal), late (a budget's training time is over by its clock) and save_due
    (--save-every)."""
    loss_sum: object  # a float64 tensor of one element on the device (read only here)
    tokens: float
    step_s: float = 0.0
    progress: float = 0.0
    stop: bool = False
    late: bool = False
    save_due: bool = False

    SUMMED = ("loss_sum", "tokens")
    AVERAGED = ("step_s", "progress")
    REQUESTS = ("stop", "late", "save_due")

    def any_request(self):
        return any(getattr(self, name) for name in self.REQUESTS)


class SyncPoints:
    """When the processes of a run next wait for each other within an epoch, and what they
    agree on there: the loop's one wait for the device (the loss is read there, one
    all-reduce of one float64 tensor, the same on every process). The first comes after the
    first batch, then every `log_interval` batches, or sooner so that one comes within
    SYNC_SECONDS (a stop is honoured that soon whatever --log-interval says). A single
    process syncs at once when it has a request."""

    def __init__(self, group, batches, log_interval):
        self.group, self.log_interval = group, log_interval
        self.last = (time.time(), batches)  # (when, after how many batches)
        self.next = batches + 1

    def due(self, batches, at_end, report):
        return (batches >= self.next or at_end
                or (self.group.size == 1 and report.any_request()))

    def agree(self, report, batches):
        """`report` (this process's, after `batches` of the epoch; its step_s is filled in
        here) combined over the processes; schedules the next sync point from the agreed
        seconds per batch."""
        (at, then), now = self.last, time.time()
        report.step_s = (now - at) / max(batches - then, 1)
        names = Report.SUMMED[1:] + Report.AVERAGED + Report.REQUESTS
        others = torch.tensor([float(getattr(report, name)) for name in names],
                              dtype=torch.float64, device=report.loss_sum.device)
        totals = self.group.sum(torch.cat([report.loss_sum.view(1), others])).tolist()
        agreed = dict(zip(("loss_sum",) + names, totals))
        for name in Report.AVERAGED:
            agreed[name] /= self.group.size
        for name in Report.REQUESTS:
            agreed[name] = agreed[name] > 0
        agreed["tokens"] = round(agreed["tokens"])
        self.last = (now, batches)
        self.next = batches + max(1, min(self.log_interval,
                                         int(SYNC_SECONDS / max(agreed["step_s"], 1e-9))))
        return Report(**agreed)
