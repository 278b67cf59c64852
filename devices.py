"""devices.py: what a script runs on: the device (chosen, named, out of its memory) and its
numeric precision (--precision, applied alike by every script).

    device = pick_device("auto")        # CUDA when PyTorch sees a GPU, else the CPU
    keep_freed_memory(device)           # on the CPU: no page faults for large tensors
    synchronize(device)                 # before reading a clock: the GPU's queue done
    set_precision("bf16", device)       # --precision, as every script applies it
    resolve_precision("auto", device)   # ("bf16", why) on a CPU whose bfloat16 pays, ...
    check_bf16(device, model, 80)       # bf16: the model's LSTMs run here, or why not

Under torchrun each process's device is distributed.start's.
"""

import ctypes
import math
import time

import torch

from lstm_layer import probe_bf16
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


def synchronize(device):
    """Wait for the work queued on `device` (a GPU runs it asynchronously): a clock read
    after this counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device):
    """"NVIDIA H100 80GB HBM3" or "2 threads": what the run's speed depends on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{threads} thread{'s' if threads > 1 else ''}"


# glibc's malloc options (malloc.h): the free memory kept at the heap's top, and how many
# blocks it may serve with mmap of their own.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory(device):
    """On the CPU under glibc (Linux), keep freed memory in the process for the next tensor.
    glibc serves every block over its mmap threshold (at most 32 MB: the dense gradient of
    cpu30's 33,278 x 400 embedding is 53 MB) with an mmap of its own, faulted in page by
    page and unmapped when freed, and torch keeps no cache of CPU memory: a cpu30 training
    step took about 13,600 page faults, and 1.2x as long as with this
    (results/cpu-allocator/). The numbers computed are the same. A process's memory then
    stays at its peak. Returns whether it applied (not on a GPU, nor without glibc's
    mallopt)."""
    if device.type != "cpu":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # (not glibc)
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def out_of_memory(error):
    """Whether `error` (a MemoryError or RuntimeError) says the device ran out of memory."""
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(error) or "out of memory" in str(error))


PRECISIONS = BY_NAME["precision"].type  # the choices of --precision


def set_precision(precision, device, training=True):
    """Apply --precision to this process, the same way in every script:
        auto   bf16 on a CPU whose bfloat16 matmuls pay, else torch (resolve_precision)
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
    precision, _ = resolve_precision(precision, device)
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


def cpu_has_bf16():
    """Whether this CPU computes bfloat16 itself (AVX-512 BF16 or AMX), as torch's oneDNN
    reads it. Without, torch converts bfloat16 to float32 and back around float32 math,
    which trains slower than float32 alone (results/bench-cpu/epyc-torch-bf16.txt)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_matmul_speedup(device, n=1024):
    """How many times as fast `device` multiplies n x n bfloat16 matrices as float32 ones,
    on the threads it trains with (the best of three timings each, about 0.2 s in all).
    Above 1 where bfloat16 instructions pay; on this repository's 2-core Intel Xeon, with
    AVX-512 BF16 but no AMX, 0.61 (results/bench-cpu/bf16-xeon.txt)."""
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b
        best = math.inf
        for _ in range(3):
            synchronize(device)
            started = time.perf_counter()
            for _ in range(4):
                a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - started)
        rates.append(1 / best)
    return rates[1] / rates[0]


# --precision auto takes bf16 on a CPU whose bfloat16 matmuls are at least this much faster
# than its float32 ones (the rest of a step gains less, or loses: its float32 parts, the
# casts).
AUTO_BF16_SPEEDUP = 1.2


def resolve_precision(precision, device):
    """(the precision, why) for --precision: auto is bf16 on a CPU that has bfloat16
    instructions and multiplies in bfloat16 at least AUTO_BF16_SPEEDUP times as fast as in
    float32, else torch's defaults (also on a GPU, until one has measured which trains
    best); any other as given (why: None)."""
    if precision != "auto":
        return precision, None
    if device.type != "cpu":
        return "torch", "auto: PyTorch's defaults on a GPU"
    if not cpu_has_bf16():
        return "torch", "auto: float32, this CPU has no bfloat16 instructions"
    speedup = bf16_matmul_speedup(device)
    choice = "bf16" if speedup >= AUTO_BF16_SPEEDUP else "torch"
    return choice, (f"auto: {'bf16' if choice == 'bf16' else 'float32'}, this CPU's bfloat16 "
                    f"matmuls run {speedup:.2f} times as fast as its float32 ones")


def check_bf16(device, model, batch_size):
    """--precision bf16: refuse a device that cannot train `model`'s LSTMs in bfloat16 at
    `batch_size` columns (lstm_layer.probe_bf16), or a CPU without bfloat16 instructions,
    saying why."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                            "support bfloat16; use --precision torch (or fp32, tf32)")
    if device.type == "cpu" and not cpu_has_bf16():
        raise SettingsError("--precision bf16: this CPU has no bfloat16 instructions (AVX-512 "
                            "BF16 or AMX), so bfloat16 would train slower than float32 here; "
                            "use --precision torch (--precision auto chooses for you)")
    try:
        probe_bf16(device, model, batch_size)
    except RuntimeError as e:
        reason = str(e).strip().split(". ")[0][:160]
        raise SettingsError(f"--precision bf16: PyTorch cannot run an LSTM in bfloat16 on this "
                            f"{device.type} ({reason}); use --precision torch here") from None
