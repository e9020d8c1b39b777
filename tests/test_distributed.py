"""`verify --distributed N`: DDP and FSDP with torchrun on the CPU (gloo), failure paths, usage errors.

Each torchrun launch costs ~8-15 s on a 2-core CPU (torchrun and every rank import torch), so the passing
run is shared by the tests that read it.
"""
import subprocess
import sys
import time

import pytest
import torch

from mishbench.distributed import launcher
from mishbench.verify import distributed

from mishbench.distributed import worker as distributed_worker

CPU = torch.device("cpu")
HAS_FULLY_SHARD = distributed_worker.find_fully_shard() is not None


@pytest.fixture(scope="module")
def cpu_rows():
    t0 = time.perf_counter()
    rows = distributed.distributed_checks(2, CPU, torch.float32, None, seed=7)
    return {c.name: c for c in rows}, time.perf_counter() - t0


def test_ddp_two_ranks_gloo(cpu_rows):
    rows, _ = cpu_rows
    ddp = rows["distributed_ddp"]
    assert ddp.status == "pass", ddp.detail
    assert ddp.metrics["world_size"] == 2 and ddp.metrics["steps"] >= 10
    assert ddp.metrics["loss_last"] < ddp.metrics["loss_first"]
    assert ddp.metrics["rel_err"] <= ddp.metrics["bar"]


@pytest.mark.skipif(not HAS_FULLY_SHARD, reason="fully_shard (FSDP2) needs torch >= 2.4")
def test_fsdp_fully_shard_two_ranks_gloo(cpu_rows):
    rows, _ = cpu_rows
    fsdp = rows["distributed_fsdp"]
    assert fsdp.status == "pass", fsdp.detail
    assert "fully_shard" in fsdp.detail


@pytest.mark.skipif(HAS_FULLY_SHARD, reason="this torch has fully_shard: FSDP runs on the CPU")
def test_fsdp_skips_with_reason_without_fully_shard(cpu_rows):
    rows, _ = cpu_rows
    fsdp = rows["distributed_fsdp"]
    assert fsdp.status == "skip"
    assert "fully_shard" in fsdp.detail and "CUDA" in fsdp.detail and torch.__version__ in fsdp.detail


def test_failing_rank_is_reported(monkeypatch):
    monkeypatch.setenv(distributed_worker.FAULT_ENV, "raise:1")
    t0 = time.perf_counter()
    rows = distributed.distributed_checks(2, CPU, torch.float32, None, seed=7, timeout=120, collective_timeout=20)
    assert time.perf_counter() - t0 < 100
    ddp = rows[0]
    assert ddp.name == "distributed_ddp" and ddp.status == "error"
    assert "rank1" in ddp.detail and "injected fault" in ddp.detail, ddp.detail
    assert rows[1].status in ("error", "skip")


def test_hanging_rank_times_out(monkeypatch):
    monkeypatch.setenv(distributed_worker.FAULT_ENV, "hang:1")
    t0 = time.perf_counter()
    rows = distributed.distributed_checks(2, CPU, torch.float32, None, seed=7, timeout=120, collective_timeout=4)
    assert time.perf_counter() - t0 < 100  # the collective timeout ends it, not the whole-run timeout
    assert rows[0].status == "error", rows[0].detail


def test_whole_run_timeout_kills_the_process_group():
    # A child that ignores nothing and sleeps, with a grandchild: kill_group must take both down.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    time.sleep(1.0)
    t0 = time.perf_counter()
    launcher.kill_group(proc, grace=5)
    proc.communicate(timeout=10)  # returns only once the grandchild holding the pipe is gone too
    assert time.perf_counter() - t0 < 15


def test_usage_errors():
    with pytest.raises(ValueError, match="0"):
        distributed.distributed_checks(0, CPU, torch.float32, None, 1)
    with pytest.raises(ValueError, match="split evenly"):
        distributed.distributed_checks(2, CPU, torch.float32, None, 1, size=distributed.Size(5, 3, 2))


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() >= 2, reason="has 2 GPUs")
def test_cli_more_ranks_than_gpus_exits_2():
    from typer.testing import CliRunner

    from mishbench.cli import app
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        # verify fails on --device cuda before --distributed when no GPU is visible: both are usage errors.
        result = CliRunner().invoke(app, ["verify", "--distributed", "2", "--device", "cuda"])
        assert result.exit_code == 2, result.output
        return
    with pytest.raises(ValueError, match=f"2 ranks need 2 GPUs.*{gpus} visible"):
        distributed.distributed_checks(2, torch.device("cuda"), torch.float32, None, 1)


def test_more_ranks_than_gpus_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="3 ranks need 3 GPUs .*but 1 visible"):
        distributed.distributed_checks(3, torch.device("cuda"), torch.float32, None, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nccl_one_rank():
    rows = {c.name: c for c in distributed.distributed_checks(1, torch.device("cuda"), torch.float32, None, seed=7)}
    for name in ("distributed_ddp", "distributed_fsdp"):
        assert rows[name].status == "pass", rows[name].detail
