"""Tests of distributed.py: the group of processes (columns, collectives, launch commands),
what processes agree on at a sync point, and train.py under torchrun: 2 CPU processes
(gloo) train like one process, a stop that reaches one of them stops all, the run resumes
exactly, and a lost process is named and restarted (docs/faults.md)."""

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import checkpoint
import distributed
import runlog
from distributed import SINGLE, Group, Report, SyncPoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_DROPOUT = ["--dropout", "0", "--dropouth", "0", "--dropouti", "0", "--dropoute", "0",
              "--wdrop", "0"]
SYNC_OFTEN = ["--log-interval", "5"]


def test_a_state_resumes_with_the_generator_of_the_gpu_the_run_used():
    mine, other = torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)
    # one saved: the run's own
    assert distributed.own_cuda_state([mine], torch.device("cuda", 3)) is mine
    # states written before saved every GPU of the host: this process's index
    assert distributed.own_cuda_state([other, mine], torch.device("cuda", 1)) is mine



def test_columns_split_a_batch_in_blocks_that_cover_it_once():
    for size, batch in ((2, 4), (3, 10), (2, 1), (4, 80)):
        blocks = [Group(rank, size).columns(batch) for rank in range(size)]
        assert [i for b in blocks for i in range(batch)[b]] == list(range(batch))
        widths = [len(range(batch)[b]) for b in blocks]
        assert max(widths) - min(widths) <= 1 and widths == sorted(widths, reverse=True)
    assert Group().columns(7) == slice(0, 7)



def test_one_process_collectives_return_their_input():
    group = distributed.SINGLE
    t = torch.tensor([1.5, 2.0])
    assert group.sum(t) is t and group.gather("x") == ["x"] and group.broadcast(3) == 3
    assert group.any(True) and not group.any(False)
    hidden = torch.randn(2, 3, 4)
    assert group.gather_columns(hidden) is hidden
    module = torch.nn.Linear(2, 2)
    assert group.wrap(module) is module
    with pytest.raises(ValueError, match="broken"):
        group.stop_if_any_failed(ValueError("broken"))
    group.stop_if_any_failed(None)



def test_launch_commands_name_the_processes():
    assert distributed.launch_command(distributed.SINGLE) == ["python"]
    assert distributed.launch_command(Group(0, 4, 4, "nccl", torchrun=True)) == [
        "torchrun", "--standalone", "--nproc_per_node", "4"]
    assert distributed.launch_command(Group(0, 16, 8, "nccl", torchrun=True))[:3] == [
        "torchrun", "--nnodes", "2"]
    assert Group(0, 16, 8, "nccl").describe() == "16 processes on 2 machines (nccl)"

def test_one_process_agrees_with_itself_field_by_field():
    """Each field of a Report combines as its kind says: sums, means, requests (any)."""
    syncs = SyncPoints(SINGLE, batches=0, log_interval=50)
    mine = Report(torch.tensor(12.5, dtype=torch.float64), 40, progress=0.25, late=True)
    agreed = syncs.agree(mine, batches=4)
    assert (agreed.loss_sum, agreed.tokens, agreed.progress) == (12.5, 40, 0.25)
    assert (agreed.stop, agreed.late, agreed.save_due) == (False, True, False)
    assert agreed.step_s >= 0 and isinstance(agreed.tokens, int)


def test_sync_points_come_every_log_interval_or_within_seconds():
    syncs = SyncPoints(SINGLE, batches=10, log_interval=50)
    quiet = Report(torch.zeros((), dtype=torch.float64), 0)
    assert not syncs.due(10, at_end=False, report=quiet)
    assert syncs.due(11, at_end=False, report=quiet)  # the first batch shows a loss
    assert syncs.due(10, at_end=True, report=quiet)
    assert syncs.due(10, at_end=False, report=Report(quiet.loss_sum, 0, stop=True))
    syncs.last = (time.time() - 1.0, 10)  # 100 batches took a second: 10 ms each
    syncs.agree(quiet, batches=110)
    assert syncs.next == 160  # every 50 batches (0.5 s, within SYNC_SECONDS)
    syncs.last = (time.time() - 100.0, 160)  # 2 s a batch: the next in 2 batches
    syncs.agree(quiet, batches=210)
    assert syncs.next == 210 + int(distributed.SYNC_SECONDS / 2.0)


def random_corpus(make_corpus, lines, seed=0):
    """`lines` lines of 10 random words of 40; valid and test are slices of its text."""
    rng = np.random.default_rng(seed)
    text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 40, 10)) + "\n"
                   for _ in range(lines))
    return make_corpus(text, text[:3000], text[3000:6000])



def command(argv, processes):
    script = os.path.join(REPO, "train.py")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(processes)] if processes else [sys.executable])
    return launcher + [script] + [str(a) for a in argv]



def train(argv, processes=None):
    """Run train.py (under torchrun with `processes`); its completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(command(argv, processes), capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done



def weights(path):
    return checkpoint.load(str(path), kind="state")["model"]



@pytest.mark.parametrize("device, backend, tolerance", [
    ("cpu", "gloo", 1e-4),
    pytest.param("cuda", "nccl", 1e-3, marks=[pytest.mark.cuda, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="needs 2 GPUs")])])
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, device, backend,
                                                                  tolerance, make_corpus, tiny):
    data = random_corpus(make_corpus, 300)
    common = tiny["awd"] + SYNC_OFTEN + NO_DROPOUT + [
        "--data", data, "--epochs", "3", "--nonmono", "1", "--max-batches", "25", "--device",
        device]
    with ThreadPoolExecutor(2) as pool:  # (side by side: each its own files)
        one = pool.submit(train, common + ["--save", tmp_path / "one.pt"])
        two = pool.submit(train, common + ["--save", tmp_path / "two.pt"], processes=2)
        one, two = one.result(), two.result()

    lines = two.stdout.splitlines()
    assert lines[0] == f"torchrun: 2 processes ({backend})"
    assert "batch 4 = 2 x 2 columns" in lines[1]
    assert sum(line.startswith("finished after") for line in lines) == 1  # rank 0 speaks
    rows = [runlog.read_metrics(tmp_path / f"{name}.csv") for name in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 3
    for a, b in zip(*rows):
        for column in ("train_loss", "valid_loss"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=2 * tolerance)
        assert a["event"] == b["event"]
    for name, value in weights(tmp_path / "one.state.pt").items():
        assert torch.allclose(value, weights(tmp_path / "two.state.pt")[name],
                              atol=tolerance), name
    # the test loss, reduced over the processes, is the one process's
    one_test, two_test = (json.loads((tmp_path / f"{name}.json").read_text())["test_loss"]
                          for name in ("one", "two"))
    assert one_test == pytest.approx(two_test, abs=2 * tolerance)



@pytest.mark.cuda
def test_one_process_under_torchrun_trains_as_without_it_on_a_gpu(tmp_path, make_corpus, tiny):
    data = random_corpus(make_corpus, 300)
    common = tiny["awd"] + SYNC_OFTEN + ["--data", data, "--epochs", "2", "--max-batches",
                                         "25", "--device", "cuda"]
    train(common + ["--save", tmp_path / "plain.pt"])
    under = train(common + ["--save", tmp_path / "torchrun.pt"], processes=1)
    assert under.stdout.startswith("torchrun: 1 process, which trains as without torchrun")
    for name, value in weights(tmp_path / "plain.state.pt").items():
        assert torch.allclose(value, weights(tmp_path / "torchrun.state.pt")[name],
                              atol=1e-5), name



def processes_under(launcher_pid):
    """{pid: its environment (a list of NAME=value)} of the processes that the process
    `launcher_pid` started, at any depth (Linux /proc)."""
    parents, environs = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ") as f:
                environs[int(entry)] = f.read().split("\0")
        except OSError:
            continue
    found, frontier = {}, {launcher_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found.update((pid, environs.get(pid, [])) for pid in frontier)
    return found



def worker_of_rank(launcher_pid, rank):
    """The pid of torchrun's worker process with this rank."""
    return next((pid for pid, environ in processes_under(launcher_pid).items()
                 if f"RANK={rank}" in environ), None)



@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_a_stop_that_reaches_one_process_stops_all_and_the_run_resumes_exactly(tmp_path,
                                                                               make_corpus,
                                                                               tiny):
    data = random_corpus(make_corpus, 1000, seed=1)
    # dropout on, to check each process's random state; epochs of 100 batches
    common = tiny["awd"] + SYNC_OFTEN + ["--data", data, "--epochs", "2", "--max-batches",
                                         "100"]
    train(common + ["--save", tmp_path / "straight.pt"], processes=2)

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(command(common + ["--save", tmp_path / "stopped.pt"], 2),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    # an epoch's training time, to send the stop about a third into the second epoch
    epoch_s = float(runlog.read_metrics(tmp_path / "straight.csv")[1]["seconds"])
    for line in launcher.stdout:  # the first epoch ended: stop rank 1 alone in the second
        if line.startswith("epoch    1 |"):
            time.sleep(epoch_s / 3)
            os.kill(worker_of_rank(launcher.pid, 1), signal.SIGTERM)
            break
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, out + err
    assert out.count("training state saved") == 1 and "--nproc_per_node 2" in out
    state = checkpoint.load(str(tmp_path / "stopped.state.pt"), kind="state")
    assert state["epoch"] == 1 and state["position"] is not None, out + err  # inside epoch 2
    assert state["position"]["hidden"][0][0].shape[1] == 4  # the whole batch's state
    assert len(state["rng"]["processes"]) == 2

    mid_epoch = (tmp_path / "stopped.state.pt").read_bytes()
    resumed = train(["--resume", tmp_path / "stopped.state.pt", "--max-batches", "100"],
                    processes=2)
    for name, value in weights(tmp_path / "straight.state.pt").items():
        assert torch.equal(value, weights(tmp_path / "stopped.state.pt")[name]), (
            name, out, resumed.stdout, state["position"]["batches"])

    # The same state continues on one process too, which says its dropout draws differ.
    (tmp_path / "stopped.state.pt").write_bytes(mid_epoch)
    one = train(["--resume", tmp_path / "stopped.state.pt", "--max-batches", "100"])
    assert "saved by 2 processes and this run has 1" in one.stdout
    assert checkpoint.load(str(tmp_path / "stopped.state.pt"), kind="state")["epoch"] == 2



def test_a_process_that_hangs_is_reported_with_the_resume_command_after_sync_timeout(
        tmp_path, make_corpus, tiny):
    """Rank 1 stopped by SIGSTOP in epoch 2 (alive, connected, silent: a hang): rank 0 waits
    --sync-timeout (here 9 s), not gloo's default 30 minutes, then says so in one line with
    the command that resumes from the epoch-1 state."""
    data = random_corpus(make_corpus, 1000, seed=1)
    argv = tiny["awd"] + SYNC_OFTEN + ["--data", data, "--epochs", "2", "--max-batches", "200",
                                       "--sync-timeout", "0.15", "--save", tmp_path / "m.pt"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(command(argv, 2), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    for line in launcher.stdout:
        if line.startswith("epoch    1 |"):
            # every process takes part in writing the state: stop rank 1 once it is written
            while not (tmp_path / "m.state.pt").exists():
                time.sleep(0.05)
            hung = worker_of_rank(launcher.pid, 1)
            os.kill(hung, signal.SIGSTOP)
            break
    deadline = time.time() + 150  # (9 s and the start of two processes, with room)
    while worker_of_rank(launcher.pid, 0) is not None and time.time() < deadline:
        time.sleep(0.5)
    os.kill(hung, signal.SIGKILL)  # (torchrun's SIGTERM waits on a stopped process)
    out, err = launcher.communicate(timeout=120)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "another process of this run was lost (gloo: no answer within --sync-timeout" \
        in errors[0]
    assert "--resume " + str(tmp_path / "m.state.pt") in errors[0], errors[0]
    assert "--sync-timeout 0.15" in errors[0]  # the resume keeps the run's options
    assert checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")["epoch"] == 1


def test_a_setting_that_fails_on_every_process_is_said_once(tmp_path, make_corpus, tiny):
    data = random_corpus(make_corpus, 300)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = tiny["awd"] + ["--data", data, "--batch_size", "3", "--save", tmp_path / "odd.pt"]
    done = subprocess.run(command(argv, 2),
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    message = "error: --batch_size 3 does not split evenly over 2 processes"
    assert done.stderr.count(message) == 1
    assert not (tmp_path / "odd.pt").exists() and not (tmp_path / "odd.lock").exists()



def test_ctrl_c_to_torchrun_saves_within_seconds_whatever_the_log_interval(tmp_path,
                                                                           make_corpus, tiny):
    """torchrun waits 30 s for its processes after a Ctrl-C, then kills them: the stop
    must be agreed on and the state saved long before, with no validation first."""
    data = random_corpus(make_corpus, 6000, seed=2)  # an epoch of tens of seconds
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(
        command(tiny["awd"] + ["--data", data, "--epochs", "1", "--log-interval", "100000",
                               "--save", tmp_path / "m.pt"], 2),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in launcher.stdout:  # training begins after this line
        if line.startswith("device: "):
            break
    time.sleep(3)
    sent = time.time()
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert "training state saved" in out, out + err
    assert os.path.getmtime(tmp_path / "m.state.pt") - sent < distributed.SYNC_SECONDS + 10
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert state["epoch"] == 0 and state["position"] is not None  # mid-epoch, unvalidated


# --- A lost process, torchrun's restarts (docs/faults.md) -----------------------------------

def test_a_collective_that_lost_its_peer_is_told_from_other_errors():
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] "
    assert distributed.lost_peer(RuntimeError(
        gloo + "Read error [127.0.0.1]:3222: Connection reset by peer. This is typically"
    )) == "connection reset by peer"
    assert distributed.lost_peer(RuntimeError(gloo + "Timed out waiting 300000ms for recv")) == (
        "no answer within --sync-timeout: it hangs or was stopped")
    assert distributed.lost_peer(RuntimeError(gloo + "Socket closed")) == "socket closed"
    assert distributed.lost_peer(RuntimeError("CUDA error: out of memory")) is None
    assert distributed.lost_peer(ValueError("shapes differ")) is None



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def kill_tree(launcher):
    """Kill torchrun and every process it started (they hold its pipes open)."""
    for pid in [launcher.pid, *processes_under(launcher.pid)]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()



def restarted_run(argv, state, restart_s=20, total_s=120):
    """train.py under torchrun --max-restarts 3 (c10d rendezvous on a free port), as
    docs/torchrun.md gives it, with process 1 killed once the first epoch has ended and its
    state (`state`, which every process takes part in writing) is written: the
    completed process (its returncode None if it ran past `total_s`), or None when the
    processes started again did not reach train.py within `restart_s`: torch's rendezvous
    after a restart can hang in gloo's connectFullMesh, with train.py or without
    (pytorch/pytorch#135712; about every second restart here without the variable set)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    with tempfile.TemporaryFile("w+") as err:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
             "--nproc_per_node", "2", "--max-restarts", "3", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{free_port()}", os.path.join(REPO, "train.py")]
            + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines = queue.Queue()  # stdout's lines, then None
        threading.Thread(target=lambda: [*map(lines.put, launcher.stdout), lines.put(None)],
                         daemon=True).start()
        out, deadline, killed, restarted = [], time.time() + total_s, None, False
        while True:
            wait_until = deadline if restarted or killed is None else killed + restart_s
            try:
                line = lines.get(timeout=max(0.0, wait_until - time.time()))
            except queue.Empty:
                kill_tree(launcher)
                if not restarted:
                    return None
                launcher.returncode = None
                break
            if line is None:
                launcher.wait()
                break
            out.append(line)
            restarted |= line.startswith("torchrun restart")
            if line.startswith("epoch    1 |") and killed is None:
                while not os.path.exists(state):  # (then process 0 trains epoch 2)
                    time.sleep(0.01)
                os.kill(worker_of_rank(launcher.pid, 1), signal.SIGKILL)
                killed = time.time()
        err.seek(0)
        return subprocess.CompletedProcess(launcher.args, launcher.returncode, "".join(out),
                                           err.read())



@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_a_lost_process_is_named_and_torchrun_restarts_continue_the_run(tmp_path, make_corpus,
                                                                         tiny):
    """Process 1 SIGKILLed in epoch 2: process 0 says so in one line, with the state to
    resume from, whether its next collective fails first or torchrun's SIGTERM reaches it
    first (a stop request, which the next collective's failure overtakes), and however long
    its cleanup takes (no signal cuts a failed run's message short); torchrun
    --max-restarts then starts both again, and they go on from the run's latest state as
    --resume would (whose exactness under torchrun the tests above show). A hang of
    torch's own rendezvous after the restart is retried."""
    data = random_corpus(make_corpus, 1000, seed=3)
    common = tiny["awd"] + SYNC_OFTEN + ["--data", data, "--epochs", "3", "--max-batches", "60"]
    for attempt in range(3):
        (tmp_path / "m.state.pt").unlink(missing_ok=True)  # (an earlier attempt's)
        done = restarted_run(common + ["--save", tmp_path / "m.pt", "--overwrite"],
                             str(tmp_path / "m.state.pt"))
        if done is not None:
            break  # (else torch's own rendezvous hung: try again)
    assert done is not None, "torchrun's rendezvous after a restart hung on every try"
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, out + err

    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and 'train.py", line' not in err, err  # (torchrun's own may show)
    assert "another process of this run was lost (gloo: " in errors[0]
    assert re.search(r"\(after epoch [12]\) continues once the cause is mended: .*--resume "
                     + re.escape(str(tmp_path / "m.state.pt")), errors[0]), errors[0]

    state_file = re.escape(str(tmp_path / "m.state.pt"))
    assert re.search(rf"torchrun restart \d: continuing from {state_file}\n", out), out
    state = checkpoint.load(str(tmp_path / "m.state.pt"), kind="state")
    assert state["epoch"] == 3 and [r["epoch"] for r in state["metrics"]] == [1, 2, 3]
    assert len(state["provenance"]) == 2  # started, then continued
    assert len(state["rng"]["processes"]) == 2
