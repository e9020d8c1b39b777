"""`verify` on the CPU composite path: every check passes, a broken backward is caught, the JSON schema."""
import json

import pytest
import torch
from typer.testing import CliRunner

from mishbench import rounding
from mishbench.op import ops
from mishbench.cli import app
from mishbench.shapes import Size
from mishbench.verify.core import verify

HALF_ON_CPU = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 1)
CPU = torch.device("cpu")
CORE = ["build", "forward", "backward", "param_count", "init", "state_dict", "gradcheck", "training", "autograd",
        "shapes", "bad_inputs"]


def statuses(report):
    return {c.name: c.status for c in report.checks}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_check_passes_on_cpu(dtype):
    report = verify(CPU, dtype, seed=7)
    st = statuses(report)
    assert set(CORE) <= set(st)
    assert st["build"] == "warn"  # the CUDA kernels were not exercised, and the report says so
    assert all(st[name] == "pass" for name in CORE if name != "build"), st
    assert report.ok and report.impl == "composite"
    assert report.precision == ("ieee" if dtype == torch.float32 else "native")


@pytest.mark.skipif(not HALF_ON_CPU, reason="torch 2.0 has no fp16/bf16 CPU matmul")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_pass_on_cpu(dtype):
    report = verify(CPU, dtype, seed=3, sizes=[Size(33, 40, 24)])
    assert report.ok, [(c.name, c.detail) for c in report.checks if c.status in ("fail", "error")]
    assert report.precision == "native"


def test_sign_flip_in_dz_fails_backward_gradcheck_and_training(monkeypatch):
    real = ops.composite_backward

    def broken(grad_y, z, x, weight, needs):
        return real(-grad_y, z, x, weight, needs)  # dz with its sign flipped

    monkeypatch.setattr(ops, "composite_backward", broken)
    st = statuses(verify(CPU, torch.float32, seed=11))
    for name in ("backward", "gradcheck", "training"):
        assert st[name] == "fail", st
    assert st["forward"] == "pass"


def test_wrong_forward_fails_forward_and_shapes(monkeypatch):
    monkeypatch.setattr(ops, "mish", lambda x: x * torch.tanh(x / (torch.exp(x) + 1)))  # the seed's wrong Mish
    st = statuses(verify(CPU, torch.float32, seed=5))
    assert st["forward"] == "fail" and st["shapes"] == "fail"


def test_error_bar_is_not_hand_widened():
    report = verify(CPU, torch.float32, seed=2)
    fwd = next(c for c in report.checks if c.name == "forward")
    m = fwd.metrics
    # bar = max(2·e_eager, floor), the floor c·(ε·‖S‖ + ε·‖R‖)/‖R‖ = c·ε·(κ + 1) in fp32 (DESIGN.md): nothing else.
    c, eps_acc, eps_st = rounding.floor_constants(torch.float32)
    assert m["floor"] == pytest.approx(c * (eps_acc * m["kappa"] + eps_st), rel=1e-9)
    assert m["bar"] == pytest.approx(max(2 * m["eager_rel_err"], m["floor"]), rel=1e-12)


def test_cli_json_schema(tmp_path):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["verify", "--device", "cpu", "--seed", "9", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("ok", "complete", "device", "gpu", "dtype", "precision", "impl", "seed", "subject", "checks", "env"):
        assert key in data
    assert data["ok"] is True and data["impl"] == "composite" and data["seed"] == 9
    assert data["subject"] == "builtin" and data["device"] == "cpu"
    for check in data["checks"]:
        assert set(check) == {"name", "status", "detail", "metrics"}
        assert "\n" not in check["detail"]
    assert set(data["env"]) >= {"torch", "cuda", "python", "mishbench"}
    assert "not exercised" in next(c for c in data["checks"] if c["name"] == "build")["detail"]


def test_same_seed_reproduces():
    a = verify(CPU, torch.float32, seed=42, sizes=[Size(9, 11, 6)])
    b = verify(CPU, torch.float32, seed=42, sizes=[Size(9, 11, 6)])
    assert [c.metrics.get("rel_err") for c in a.checks] == [c.metrics.get("rel_err") for c in b.checks]
