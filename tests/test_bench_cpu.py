"""`mishbench bench` on the CPU: flag parsing, the CSV schema, and the bench loop driven end to end with the
host-clock timer — the OOM, error, mismatch, interrupt and resume paths simulated."""
import io
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mishbench.bench import local, plan, providers, sink

from mishbench import schema as csvschema

from mishbench import clock as timing
from mishbench.cli import app
from mishbench.shapes import Size

from cli_helpers import cli_output

DESIGN_COLUMNS = """run_id, timestamp, git_sha, gpu, driver, torch, cuda, world_size, impl, mode, dtype, precision,
accuracy_class, batch, in_features, out_features, median_ms, p20_ms, p80_ms, iters, tflops, pct_of_peak,
speedup_vs_eager, speedup_vs_compile, speedup_vs_fp32_eager, rel_err, compile_s, peak_mem_mb, seed,
candidate_sha256, status, route"""

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------
def test_parse_baselines_defaults_and_errors():
    assert plan.parse_baselines(None, "kernelbench") == ["eager", "compile"]
    assert plan.parse_baselines(None, "small") == ["eager", "compile"]
    assert plan.parse_baselines(None, "custom") == ["eager", "compile"]
    assert plan.parse_baselines(None, "sweep") == ["eager"]
    assert plan.parse_baselines("compile-max, eager,compile-max", "sweep") == ["compile-max", "eager"]
    assert plan.parse_baselines("compile", "sweep") == ["eager", "compile"]  # eager is always the baseline
    with pytest.raises(ValueError, match="'fast'"):
        plan.parse_baselines("eager,fast", "kernelbench")
    with pytest.raises(ValueError, match="empty"):
        plan.parse_baselines("eager,,compile", "kernelbench")


@pytest.mark.parametrize("args, needle", [
    (["--sizes", "12x3"], "12x3"),
    (["--sizes", "4x4x4,1x0x3"], "1x0x3"),
    (["--preset", "huge"], "huge"),
    (["--baselines", "eager,turbo"], "turbo"),
    (["--mode", "sideways"], "sideways"),
    (["--dtype", "fp8"], "fp8"),
    (["--dtype", "bf16", "--precision", "tf32"], "tf32"),
    (["--candidate", "/no/such/cand.py"], "/no/such/cand.py"),
    (["--sizes", "4x4x4", "--preset", "small"], "--preset"),
])
def test_bench_usage_errors_exit_2(args, needle):
    result = CliRunner().invoke(app, ["bench"] + args)
    assert result.exit_code == 2, cli_output(result)
    assert needle in cli_output(result)
    assert "Traceback" not in cli_output(result)


def test_bench_without_gpu_exits_1_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = CliRunner().invoke(app, ["bench", "--sizes", "4x4x4", "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 1
    assert "needs a CUDA GPU" in cli_output(result)
    assert not (tmp_path / "r.csv").exists()


# bench --distributed N: tests/test_distributed_bench.py


# ---------------------------------------------------------------------------------------------------------
# CSV schema
# ---------------------------------------------------------------------------------------------------------
def test_columns_are_designs():
    assert csvschema.COLUMNS == [c.strip() for c in DESIGN_COLUMNS.replace("\n", " ").split(",")]


def test_append_writes_header_once_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    csvschema.append_rows(path, [csvschema.new_row(impl="eager", median_ms=1.5, status="ok")])
    csvschema.append_rows(path, [csvschema.new_row(impl="compile", status="oom")])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(csvschema.COLUMNS) and len(lines) == 3
    rows = csvschema.read_rows(path)
    assert [r["impl"] for r in rows] == ["eager", "compile"] and rows[0]["median_ms"] == "1.5"
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(csvschema.CsvSchemaError, match="missing columns"):
        csvschema.append_rows(foreign, [csvschema.new_row()])
    assert foreign.read_text() == "a,b\n1,2\n"
    with pytest.raises(KeyError):
        csvschema.new_row(bogus=1)


# ---------------------------------------------------------------------------------------------------------
# The bench loop on the CPU
# ---------------------------------------------------------------------------------------------------------
def opts_for(tmp_path, sizes=(Size(8, 16, 12),), modes=("fwd",), baselines=("eager",), **kw):
    base = dict(sizes=list(sizes), dtype=torch.float32, precision=None, modes=list(modes),
                baselines=list(baselines), warmup=1, iters=5, out=tmp_path / "r.csv", seed=7, warmup_ms=0.0,
                max_iters=30, input_sets=2)
    base.update(kw)
    return plan.BenchOptions(**base)


def run_cpu(opts, **kw):
    out = io.StringIO()
    console = Console(file=out, width=250)
    kw.setdefault("timer", timing.time_cpu)
    kw.setdefault("peak_fn", lambda kind: 1.0)
    code = local.run_guarded(opts, console, CPU, **kw)
    return code, out.getvalue()


def test_cpu_run_writes_every_column_and_speedups(tmp_path):
    opts = opts_for(tmp_path, modes=("fwd", "fwd_bwd"))
    code, text = run_cpu(opts)
    assert code == 0, text
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["mode"]) for r in rows] == [("eager", "fwd"), ("mishbench", "fwd"),
                                                      ("eager", "fwd_bwd"), ("mishbench", "fwd_bwd")]
    # On the CPU ModelNew runs the composite path: impl=mishbench, and the route says so (DESIGN.md).
    assert [r["route"] for r in rows] == ["", "composite", "", "composite/composite"]
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        assert r["status"] == "ok" and r["precision"] == "ieee" and r["accuracy_class"] == "fp32"
        assert int(r["iters"]) >= plan.MIN_ITERS
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["rel_err"]) < 1e-5 and r["seed"] == "7" and r["world_size"] == "1"
        assert r["tflops"] and r["pct_of_peak"] and r["speedup_vs_eager"] and r["speedup_vs_fp32_eager"]
        assert r["speedup_vs_compile"] == ""  # no compile baseline
    fwd, bwd = rows[1], rows[3]
    # TFLOP/s: 2·B·K·N forward, 3× that for fwd_bwd
    assert float(fwd["tflops"]) == pytest.approx(2 * 8 * 16 * 12 / (float(fwd["median_ms"]) * 1e-3) / 1e12, rel=1e-3)
    assert float(bwd["tflops"]) == pytest.approx(6 * 8 * 16 * 12 / (float(bwd["median_ms"]) * 1e-3) / 1e12, rel=1e-3)
    assert float(rows[0]["speedup_vs_eager"]) == pytest.approx(1.0)
    assert "mishbench bench" in text


def test_compile_baseline_runs_the_compiled_graph(tmp_path, monkeypatch):
    monkeypatch.setattr(providers, "COMPILE_BACKEND", "eager")  # dynamo without a C++/Triton toolchain
    opts = opts_for(tmp_path, baselines=("eager", "compile"))
    code, text = run_cpu(opts)
    assert code == 0, text
    rows = {r["impl"]: r for r in csvschema.read_rows(opts.out)}
    assert rows["compile"]["status"] == "ok", text
    assert float(rows["compile"]["compile_s"]) > 0
    assert rows["mishbench"]["speedup_vs_compile"]


def test_compile_fallback_to_eager_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(providers, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(local, "compile_module", lambda module, impl: module)  # "compiled" but dynamo never ran
    opts = opts_for(tmp_path, baselines=("eager", "compile"))
    code, text = run_cpu(opts)
    rows = {r["impl"]: r for r in csvschema.read_rows(opts.out)}
    assert rows["compile"]["status"] == "error" and rows["compile"]["median_ms"] == ""
    assert "compiled no graph" in text
    assert code == 0  # a failing baseline does not fail the run; ours would


def test_recompile_during_timing_is_an_error(monkeypatch):
    watch = providers.CompileWatch()
    state = {"graphs": 1, "frames": 1}
    monkeypatch.setattr(providers.CompileWatch, "_counters", staticmethod(lambda: (state["graphs"], state["frames"])))
    watch.before_first_call()
    state["graphs"] = 2
    watch.after_first_call()
    watch.freeze()
    watch.check()
    state["frames"] = 3
    with pytest.raises(providers.ProviderFailed, match="2 frame"):
        watch.check()


def _fail_for(impl, exc_factory, when=lambda inputs: True):
    original = providers.Provider.call

    def call(self, inputs):
        if self.spec.impl == impl and when(inputs):
            raise exc_factory()
        return original(self, inputs)
    return call


def test_real_oom_marks_the_row_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(providers.Provider, "call",
                        _fail_for("mishbench", lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried")))
    opts = opts_for(tmp_path, sizes=(Size(8, 16, 12), Size(3, 5, 7)))
    code, text = run_cpu(opts)
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["status"]) for r in rows] == [("eager", "ok"), ("mishbench", "oom")] * 2
    assert rows[1]["speedup_vs_eager"] == "" and rows[1]["median_ms"] == ""
    assert code == 0, text  # oom rows alone do not fail the run
    assert "out of memory" in text


def test_estimated_oom_is_not_tried(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("a provider was built for a size that cannot fit")
    monkeypatch.setattr(local.LocalRun, "_build", never)
    opts = opts_for(tmp_path)
    code, text = run_cpu(opts, free_memory=lambda: 1024)
    rows = csvschema.read_rows(opts.out)
    assert [r["status"] for r in rows] == ["oom", "oom"] and code == 0
    assert "not tried" in text


def test_estimate_bytes_is_sane():
    kb = Size(1024, 8192, 8192)
    fwd = providers.estimate_bytes(kb, "fwd", torch.float32, 3, 3, flush=100 * 2**20)
    bwd = providers.estimate_bytes(kb, "fwd_bwd", torch.float32, 3, 3, flush=100 * 2**20)
    assert 2**30 < fwd < bwd < 16 * 2**30
    assert providers.estimate_bytes(kb, "fwd", torch.bfloat16, 3, 3) < fwd


def test_other_errors_mark_the_row_and_fail_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(providers.Provider, "call", _fail_for("mishbench", lambda: RuntimeError("illegal address")))
    opts = opts_for(tmp_path)
    code, text = run_cpu(opts)
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["status"]) for r in rows] == [("eager", "ok"), ("mishbench", "error")]
    assert code == 1 and "illegal address" in text


def test_mismatch_is_not_timed_and_gets_no_speedup(tmp_path, monkeypatch):
    original = providers.Provider.outputs

    def outputs(self, inputs):
        y, grads = original(self, inputs)
        return (y * 1.01 if self.spec.impl == "mishbench" else y), grads
    monkeypatch.setattr(providers.Provider, "outputs", outputs)
    opts = opts_for(tmp_path)
    code, text = run_cpu(opts)
    rows = {r["impl"]: r for r in csvschema.read_rows(opts.out)}
    assert rows["mishbench"]["status"] == "mismatch" and code == 1
    assert rows["mishbench"]["median_ms"] == "" and rows["mishbench"]["speedup_vs_eager"] == ""
    assert float(rows["mishbench"]["rel_err"]) == pytest.approx(0.01, rel=1e-3)
    assert rows["eager"]["status"] == "ok"


def test_interrupt_keeps_finished_rows(tmp_path, monkeypatch):
    second = lambda inputs: inputs.x.shape == (3, 5)  # noqa: E731
    monkeypatch.setattr(providers.Provider, "call", _fail_for("mishbench", KeyboardInterrupt, when=second))
    opts = opts_for(tmp_path, sizes=(Size(8, 16, 12), Size(3, 5, 7)))
    code, text = run_cpu(opts)
    assert code == plan.INTERRUPTED
    rows = csvschema.read_rows(opts.out)
    assert [(r["batch"], r["impl"], r["status"]) for r in rows] == [("8", "eager", "ok"), ("8", "mishbench", "ok")]
    assert "interrupted: 2 finished row(s) kept" in text and "Traceback" not in text


def test_resume_skips_finished_cases(tmp_path):
    opts = opts_for(tmp_path)
    assert run_cpu(opts)[0] == 0
    opts2 = opts_for(tmp_path, sizes=(Size(8, 16, 12), Size(3, 5, 7)), resume=True)
    code, text = run_cpu(opts2)
    assert code == 0 and "1 case(s) already in" in text
    rows = csvschema.read_rows(opts.out)
    assert [r["batch"] for r in rows] == ["8", "8", "3", "3"]


def test_foreign_out_file_is_a_usage_error(tmp_path):
    opts = opts_for(tmp_path)
    opts.out.write_text("a,b\n1,2\n")
    code, text = run_cpu(opts)
    assert code == 2 and "missing columns" in text


def test_tf32_mode_also_measures_strict_fp32_eager(tmp_path, monkeypatch):
    # On the CPU every fp32 mode computes plain fp32; pretend the run resolved to tf32 to drive the plan.
    monkeypatch.setattr(plan, "resolve_precision", lambda precision, dtype, device: "tf32")
    opts = opts_for(tmp_path, precision="tf32")
    code, text = run_cpu(opts)
    assert code == 0, text
    rows = csvschema.read_rows(opts.out)
    got = [(r["impl"], r["precision"], r["accuracy_class"]) for r in rows]
    assert got == [("eager", "tf32", "tf32"), ("eager", "ieee", "fp32"), ("mishbench", "tf32", "tf32")]
    subject = rows[2]
    assert subject["speedup_vs_eager"] and subject["speedup_vs_fp32_eager"]
    assert float(subject["speedup_vs_fp32_eager"]) == pytest.approx(
        float(rows[1]["median_ms"]) / float(subject["median_ms"]), rel=1e-3)


def test_half_types_have_no_fp32_eager_speedup(tmp_path):
    opts = opts_for(tmp_path, dtype=torch.bfloat16)
    code, text = run_cpu(opts)
    assert code == 0, text
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["precision"], r["accuracy_class"], r["dtype"]) for r in rows] == [
        ("eager", "native", "bf16", "bf16"), ("mishbench", "native", "bf16", "bf16")]
    assert rows[1]["speedup_vs_eager"] and rows[1]["speedup_vs_fp32_eager"] == ""


def test_candidate_module_missing_is_a_clean_error(tmp_path, monkeypatch):
    cand = tmp_path / "cand.py"
    cand.write_text("class ModelNew: pass\n")
    monkeypatch.setitem(sys.modules, "mishbench.candidate.measure", None)  # import fails
    code, text = run_cpu(opts_for(tmp_path, candidate=cand))
    assert code == 1 and "candidates module" in text


class FakeCandidateBench:
    """Stands in for candidate.measure.CandidateBench (one worker process for the whole run: the candidate's,
    or with `trusted` a baseline's) and records its life; `log` is every worker's start/time/finish in order."""
    made: list = []
    log: list = []

    def __init__(self, path, device, dtype, precision=None, seed=None, limits=None, load_error=None,
                 on_measure=None, impl="candidate"):
        self.path, self.device, self.dtype, self.precision, self.seed = path, device, dtype, precision, seed
        self.impl = impl
        self.events, self.measured, self.load_error = [], [], None
        self._load_error, self._on_measure = load_error, on_measure
        FakeCandidateBench.made.append(self)

    def __enter__(self):
        self.events.append("open")
        self.load_error = self._load_error
        return self

    def __exit__(self, exc_type, *exc):
        self.events.append("kill" if exc_type is not None else "close")
        return False

    def start(self, size, mode):
        assert self.events == ["open"], f"start on a worker that is {self.events}"
        self.measured.append((size, mode))
        FakeCandidateBench.log.append(("start", self.impl, size, mode))
        row = {"impl": self.impl, "mode": mode, "batch": size.batch, "in_features": size.in_features,
               "out_features": size.out_features, "seed": self.seed}
        if self.impl == "candidate":
            row["candidate_sha256"] = "abc"
        if self.load_error:
            row.update(status="error", detail=self.load_error)
        return row

    def time_round(self, row, batches=2):
        FakeCandidateBench.log.append(("time", self.impl, int(row["batch"]), row["mode"]))
        if self._on_measure is not None:
            self._on_measure(Size(row["batch"], row["in_features"], row["out_features"]), row["mode"])

    def finish(self, row):
        if row.get("status") != "error":
            ms = 2e-4 if self.impl == "eager" else 1e-4
            row.update(median_ms=ms, p20_ms=ms, p80_ms=ms, iters=30, rel_err=1e-7, status="ok", detail="",
                       host_median_ms=ms, bar=1e-6)
        return row


@pytest.fixture
def fake_candidate(tmp_path, monkeypatch):
    """--candidate with candidate.measure.CandidateBench replaced by FakeCandidateBench (its `trusted`
    workers too); yields (path, set_kwargs), the kwargs going to the candidate's fake only."""
    import types
    cand = tmp_path / "cand.py"
    cand.write_text("class ModelNew: pass\n")
    FakeCandidateBench.made, FakeCandidateBench.log = [], []
    kwargs = {}

    def factory(*a, **k):
        return FakeCandidateBench(*a, **dict(k, **kwargs))

    def trusted(impl, precision, tf32, device, dtype, seed, cache, limits=None):
        return FakeCandidateBench(None, device, dtype, precision, seed, impl=impl)
    factory.trusted = trusted
    monkeypatch.setitem(sys.modules, "mishbench.candidate.measure", types.SimpleNamespace(CandidateBench=factory))
    return cand, kwargs.update


def _made(impl):
    return [cb for cb in FakeCandidateBench.made if cb.impl == impl]


def test_candidate_rows_are_completed_and_compared(tmp_path, fake_candidate):
    cand, _ = fake_candidate
    opts = opts_for(tmp_path, candidate=cand)
    code, text = run_cpu(opts)
    assert code == 0, text
    rows = {r["impl"]: r for r in csvschema.read_rows(opts.out)}
    assert rows["candidate"]["candidate_sha256"] == "abc" and rows["candidate"]["run_id"] == rows["eager"]["run_id"]
    assert float(rows["candidate"]["speedup_vs_eager"]) == pytest.approx(2.0) and rows["candidate"]["tflops"]
    assert rows["mishbench"]["route"] == "composite"  # the plan's row, filled by the worker's part
    (cb,) = _made("candidate")
    assert cb.path == cand and cb.seed == 7 and cb.measured == [(Size(8, 16, 12), "fwd")]


def test_every_row_in_its_own_worker_for_the_whole_run(tmp_path, fake_candidate):
    """--candidate: each planned row (eager, mishbench) and the candidate get ONE worker for the whole run,
    and within each case the workers take turns, round by round, on the harness's batch clock."""
    cand, _ = fake_candidate
    sizes, modes = (Size(8, 16, 12), Size(3, 5, 7)), ("fwd", "fwd_bwd")
    opts = opts_for(tmp_path, sizes=sizes, modes=modes, candidate=cand)
    code, text = run_cpu(opts)
    assert code == 0, text
    impls = ("eager", "mishbench", "candidate")
    assert sorted(cb.impl for cb in FakeCandidateBench.made) == sorted(impls)  # constructed once each, ...
    cases = [(s, m) for s in sizes for m in modes]
    for cb in FakeCandidateBench.made:
        assert cb.events == ["open", "close"]  # ... opened once, closed once at the end
        assert cb.measured == cases
    one_case = [("start", i) for i in impls] + [("time", i) for _ in range(local.BATCH_ROUNDS) for i in impls]
    assert [(e[0], e[1]) for e in FakeCandidateBench.log] == one_case * len(cases)
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["batch"], r["mode"]) for r in rows] == [
        (impl, str(s.batch), m) for s, m in cases for impl in impls]


def test_candidate_that_does_not_load_fails_every_case_and_the_run(tmp_path, fake_candidate):
    cand, configure = fake_candidate
    configure(load_error="candidate did not load: line 3: NameError: name 'nn' is not defined")
    opts = opts_for(tmp_path, sizes=(Size(8, 16, 12), Size(3, 5, 7)), candidate=cand)
    code, text = run_cpu(opts)
    assert code == 1, text
    rows = csvschema.read_rows(opts.out)
    cand_rows = [r for r in rows if r["impl"] == "candidate"]
    assert [r["status"] for r in cand_rows] == ["error", "error"]
    assert all(r["status"] == "ok" for r in rows if r["impl"] != "candidate")  # baselines still timed
    assert text.count("NameError: name 'nn' is not defined") >= 2
    assert all(cb.events == ["open", "close"] for cb in FakeCandidateBench.made)


@pytest.mark.parametrize("where", ["baselines", "candidate"])
def test_interrupt_kills_every_worker_and_keeps_rows(tmp_path, fake_candidate, monkeypatch, where):
    cand, configure = fake_candidate
    second = Size(3, 5, 7)
    if where == "baselines":  # Ctrl-C while the eager baseline's worker times the second case
        original = FakeCandidateBench.time_round

        def time_round(self, row, batches=2):
            if self.impl == "eager" and int(row["batch"]) == second.batch:
                raise KeyboardInterrupt
            return original(self, row, batches)
        monkeypatch.setattr(FakeCandidateBench, "time_round", time_round)
    else:
        def on_measure(size, mode):
            if size == second:
                raise KeyboardInterrupt
        configure(on_measure=on_measure)
    opts = opts_for(tmp_path, sizes=(Size(8, 16, 12), second), candidate=cand)
    code, text = run_cpu(opts)
    assert code == plan.INTERRUPTED, text
    assert len(FakeCandidateBench.made) == 3 and all(cb.events == ["open", "kill"] for cb in FakeCandidateBench.made)
    rows = csvschema.read_rows(opts.out)
    assert [(r["batch"], r["impl"], r["status"]) for r in rows] == [
        ("8", "eager", "ok"), ("8", "mishbench", "ok"), ("8", "candidate", "ok")]
    assert "interrupted: 3 finished row(s) kept" in text


def test_candidate_worker_is_closed_when_the_run_fails(tmp_path, fake_candidate, monkeypatch):
    cand, _ = fake_candidate

    def boom(*a, **k):
        raise RuntimeError("the CSV went away")
    monkeypatch.setattr(sink, "append_rows", lambda path, rows: boom() if rows else 0)
    with pytest.raises(RuntimeError, match="CSV went away"):
        run_cpu(opts_for(tmp_path, candidate=cand))
    assert len(FakeCandidateBench.made) == 3 and all(cb.events == ["open", "kill"] for cb in FakeCandidateBench.made)


def test_resumed_run_with_nothing_to_do_starts_no_worker(tmp_path, fake_candidate):
    cand, _ = fake_candidate
    opts = opts_for(tmp_path, candidate=cand)
    assert run_cpu(opts)[0] == 0
    code, text = run_cpu(opts_for(tmp_path, candidate=cand, resume=True))
    assert code == 0 and "1 case(s) already in" in text, text
    assert [cb.events for cb in FakeCandidateBench.made] == [["open", "close"]] * 3 + [[]] * 3


def test_older_header_loads_and_resume_upgrades_it(tmp_path):
    """A file written before `route` existed loads with it empty; appending first rewrites the header,
    keeping every row (DESIGN.md: columns are only ever added at the end)."""
    path = tmp_path / "old.csv"
    old = csvschema.COLUMNS[:-1]
    row = csvschema.new_row(impl="eager", mode="fwd", batch=1, in_features=2, out_features=3, status="ok")
    with open(path, "w") as f:
        f.write(",".join(old) + "\n" + ",".join(str(row[c]) for c in old) + "\n")
    rows = csvschema.read_rows(path)
    assert len(rows) == 1 and rows[0]["route"] == "" and rows[0]["impl"] == "eager"
    csvschema.append_rows(path, [csvschema.new_row(impl="mishbench", mode="fwd", batch=1, in_features=2,
                                                   out_features=3, status="ok", route="simt")])
    assert open(path).readline().strip().split(",") == csvschema.COLUMNS
    rows = csvschema.read_rows(path)
    assert [r["impl"] for r in rows] == ["eager", "mishbench"] and [r["route"] for r in rows] == ["", "simt"]
    with open(tmp_path / "shuffled.csv", "w") as f:
        f.write(",".join(reversed(csvschema.COLUMNS)) + "\n")
    with pytest.raises(csvschema.CsvSchemaError, match="different order"):
        csvschema.append_rows(tmp_path / "shuffled.csv", [])
