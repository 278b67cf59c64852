"""distributed.py: one training run on several processes (torchrun), or on one.

torchrun starts train.py once per process, with RANK, LOCAL_RANK and WORLD_SIZE in the
environment. The processes share one global batch: each takes its own block of the
batchified split's columns, DistributedDataParallel averages their gradients, so every
process holds the same weights after every step. What one process may learn before the
others (a signal, a passed deadline, a due save) they decide together at fixed points of
the loop; the main process (rank 0) alone writes files and prints.

`Group` is that set of processes. For a run without torchrun it is a single process, and
every collective below returns its input untouched: the one-process path is the plain one.

    group, device = start("auto")       # reads torchrun's environment; NCCL or gloo
    group.columns(80)                   # this process's columns of a batch of 80
    group.sum(tensor)                   # summed over the processes, in place
"""

import contextlib
import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from config import SettingsError, pick_device


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
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield Group(rank, size, local_size, backend, device, torchrun=True), device
        dist.barrier()  # no process leaves while another may still talk to it
    finally:
        dist.destroy_process_group()
