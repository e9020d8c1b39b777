"""The `mishbench` command line: parses flags, calls the modules that do the work, prints.

Exit codes everywhere: 0 success, 1 a check failed or the work failed, 2 usage error (bad flag, bad
--sizes, missing file) with a one-line message naming the bad value.
"""
import datetime
import os
from pathlib import Path
from typing import List, Optional

import typer

from mishbench.console import console, print_mapping, print_report, usage_error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Verify and benchmark a fused Linear -> Mish -> Mish CUDA op (KernelBench L2/29).")

USAGE = 2


def _usage(message: str) -> "typer.Exit":
    usage_error(message)
    return typer.Exit(USAGE)


def _dtype(name: str):
    from mishbench.op.precision import parse_dtype
    try:
        return parse_dtype(name)
    except ValueError as exc:
        raise _usage(f"--dtype: {exc}") from None


def _precision(precision: Optional[str], dtype) -> Optional[str]:
    from mishbench.op.precision import check_combination
    try:
        check_combination(precision, dtype)
    except ValueError as exc:
        raise _usage(f"--precision: {exc}") from None
    return precision


def _sizes(sizes: Optional[List[str]], preset: Optional[str] = None):
    from mishbench.shapes import parse_preset, parse_sizes
    try:
        out = parse_sizes(sizes or [])
        if preset:
            out += [s for s in parse_preset(preset) if s not in out]
    except ValueError as exc:
        raise _usage(f"--sizes/--preset: {exc}") from None
    return out


def _device(name: str):
    from mishbench.verify.core import resolve_device
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise _usage(f"--device: {exc}") from None


def _existing_file(path: Optional[Path], flag: str) -> Optional[Path]:
    if path is not None and not path.is_file():
        raise _usage(f"{flag}: no such file {str(path)!r}")
    return path


def _writable_file(path: Optional[Path], flag: str) -> Optional[Path]:
    """Checked before a run, so that a bad output path does not lose the run's results at its end."""
    if path is None:
        return None
    if path.is_dir():
        raise _usage(f"{flag}: {str(path)!r} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _usage(f"{flag}: cannot create the folder of {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise _usage(f"{flag}: cannot write {str(path)!r}: permission denied")
    return path


@app.command()
def info():
    """GPU, driver, CUDA runtime, nvcc, torch, Python, arch list and extension build status."""
    from mishbench.op import build
    from mishbench import envinfo
    rows = envinfo.describe()
    status = build.status()
    rows.update({f"extension {k}": str(v) for k, v in status.items()})
    print_mapping("mishbench info", rows)


@app.command("build")
def build_cmd(arch: Optional[str] = typer.Option(None, help='CUDA archs, e.g. "8.0;9.0a" (default: the GPU\'s)'),
              force: bool = typer.Option(False, "--force", help="rebuild even if cached"),
              verbose: bool = typer.Option(False, "--verbose", help="show the compiler's output")):
    """Compile csrc/ into the extension cache (works with nvcc and no GPU when --arch is given)."""
    from mishbench.op import build
    try:
        with console.status("building the CUDA extension…") as spinner:
            result = build.build(arch=arch, force=force, verbose=verbose,
                                 progress=lambda msg: spinner.update(f"building: {msg}"))
    except ValueError as exc:
        raise _usage(f"--arch: {exc}") from None
    if not result.ok:
        console.print(f"[bold red]build failed[/] ({result.seconds:.1f} s); first errors:")
        for line in result.errors[:10]:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        console.print(f"full log: {result.log_path}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]built[/] for {result.arch_list} in {result.seconds:.1f} s -> {result.module_path}",
                  highlight=False, soft_wrap=True)


@app.command()
def verify(device: str = typer.Option("auto", help="auto | cpu | cuda"),
           dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16 | fp64"),
           precision: Optional[str] = typer.Option(None, help="ieee | 3xtf32 | tf32 (fp32 only; default: "
                                                              "PyTorch's float32 matmul setting)"),
           sizes: Optional[List[str]] = typer.Option(None, "--sizes", help="BxKxN[,BxKxN…] for forward/backward"),
           candidate: Optional[Path] = typer.Option(None, help="a .py file or a text/markdown answer defining ModelNew"),
           distributed: int = typer.Option(0, help="also train under DDP and FSDP with N ranks"),
           seed: Optional[int] = typer.Option(None, help="reproduce a run (default: a fresh random seed)"),
           strict: bool = typer.Option(False, "--strict", help="skipped checks fail the run"),
           json_path: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON")):
    """Check a ModelNew (ours, or --candidate) against the reference Model."""
    torch_dtype = _dtype(dtype)
    precision = _precision(precision, torch_dtype)
    size_list = _sizes(sizes)
    dev = _device(device)
    _existing_file(candidate, "--candidate")
    if distributed < 0:
        raise _usage(f"--distributed: must be >= 0, got {distributed}")
    if candidate is not None and distributed:
        # The DDP/FSDP checks train mishbench's own ModelNew in torchrun workers; a candidate only ever runs
        # in its isolated worker process, so their rows would describe the wrong model.
        raise _usage("--candidate with --distributed: the distributed checks run mishbench's own ModelNew, "
                     "not a candidate; run them separately")
    _writable_file(json_path, "--json")
    report = _verify_report(dev, torch_dtype, precision, size_list, candidate, distributed, seed)
    print_report(report)
    if json_path is not None:
        try:
            json_path.write_text(report.to_json() + "\n")
        except OSError as exc:
            usage_error(f"--json: cannot write {str(json_path)!r}: {exc.strerror or exc}")
            raise typer.Exit(1) from None
        console.print(f"JSON report: {json_path}", highlight=False)
    if not report.ok or (strict and not report.complete):
        raise typer.Exit(1)


def _verify_report(dev, torch_dtype, precision, size_list, candidate, distributed, seed):
    from mishbench.verify import core as verify_mod
    progress = None
    with console.status("verifying…") as spinner:
        progress = lambda name: spinner.update(f"verifying: {name}")  # noqa: E731
        if candidate is not None:
            from mishbench.candidate.source import CandidateUsageError
            from mishbench.verify.candidate import verify_candidate
            try:
                report = verify_candidate(candidate, dev, torch_dtype, precision, seed=seed,
                                          sizes=size_list or None, progress=progress)
            except CandidateUsageError as exc:
                raise _usage(f"--candidate: {exc}") from None
        else:
            report = verify_mod.verify(dev, torch_dtype, precision, seed=seed, sizes=size_list or None,
                                       progress=progress)
        if distributed:
            from mishbench.verify import distributed as dist_mod
            try:
                for check in dist_mod.distributed_checks(distributed, dev, torch_dtype, precision, report.seed,
                                                         progress=progress):
                    report.add(check)
            except ValueError as exc:
                raise _usage(f"--distributed: {exc}") from None
    return report


@app.command()
def bench(sizes: Optional[List[str]] = typer.Option(None, "--sizes", help="BxKxN[,BxKxN…]"),
          preset: Optional[str] = typer.Option(None, help="kernelbench | sweep | small (default: kernelbench)"),
          dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16 | fp64"),
          precision: Optional[str] = typer.Option(None, help="ieee | 3xtf32 | tf32 (fp32 only)"),
          mode: Optional[str] = typer.Option(None, help="fwd | fwd_bwd | all (default: fwd; fwd_bwd, a DDP "
                                                         "training step, with --distributed)"),
          baselines: Optional[str] = typer.Option(None, help="comma list of eager,compile,compile-max "
                                                             "(default: eager,compile; eager for the sweep)"),
          warmup: int = typer.Option(10, help="warm-up calls (at least; warm-up also runs >= 100 ms)"),
          iters: int = typer.Option(30, help="timed calls (at least 30; more when the spread is wide)"),
          candidate: Optional[Path] = typer.Option(None, help="also time a candidate ModelNew file"),
          distributed: int = typer.Option(0, help="time one DDP training step with N ranks (one GPU each; "
                                                  "gloo on the CPU where no GPU is visible)"),
          resume: bool = typer.Option(False, "--resume", help="skip rows already in --out"),
          out: Optional[Path] = typer.Option(None, help="CSV to append rows to (default results/<timestamp>.csv)")):
    """Time Model (eager, torch.compile) and ModelNew with CUDA events; append rows to a CSV."""
    from mishbench.bench import plan as plan_mod
    from mishbench.bench.run import run_bench
    torch_dtype = _dtype(dtype)
    precision = _precision(precision, torch_dtype)
    if sizes and preset:
        raise _usage("--sizes and --preset: give one or the other")
    size_list = _sizes(sizes, None if sizes else (preset or "kernelbench"))
    mode = mode or ("fwd_bwd" if distributed else "fwd")
    if mode not in ("fwd", "fwd_bwd", "all"):
        raise _usage(f"--mode: unknown mode {mode!r}: expected fwd, fwd_bwd or all")
    _existing_file(candidate, "--candidate")
    if warmup < 0 or iters < 1:
        raise _usage(f"--warmup/--iters: must be >= 0 and >= 1, got {warmup} and {iters}")
    if distributed < 0:
        raise _usage(f"--distributed: must be >= 0, got {distributed}")
    try:
        base = plan_mod.parse_baselines(baselines, preset or ("custom" if sizes else "kernelbench"))
    except ValueError as exc:
        raise _usage(f"--baselines: {exc}") from None
    opts = plan_mod.BenchOptions(sizes=size_list, dtype=torch_dtype, precision=precision,
                                 modes=["fwd", "fwd_bwd"] if mode == "all" else [mode], baselines=base,
                                 warmup=warmup, iters=max(iters, 1), candidate=candidate,
                                 distributed=distributed, resume=resume, out=out or default_results_path())
    raise typer.Exit(run_bench(opts, console))


@app.command()
def report(csvs: List[Path] = typer.Argument(None, help="result CSVs (default: results/*.csv)"),
           markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table"),
           csv_out: Optional[Path] = typer.Option(None, "--csv", help="write the merged table as CSV"),
           plot: Optional[Path] = typer.Option(None, help="write speedup and TFLOP/s plots (PNG)")):
    """Merge result CSVs into one table: one row per shape × mode, providers as columns."""
    from mishbench.report import core as report_mod
    paths = list(csvs or sorted(Path("results").glob("*.csv")))
    if not paths:
        raise _usage("no result CSVs given and none under results/")
    for p in paths:
        _existing_file(p, "CSV")
    raise typer.Exit(report_mod.run_report(paths, markdown=markdown, csv_out=csv_out, plot=plot, console=console))


def default_results_path() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}.csv"


@app.command()
def run():
    """The main job: build, verify, bench --preset kernelbench and report (verify alone without a GPU)."""
    import torch
    if not torch.cuda.is_available():
        dev = _device("cpu")
        rep = _verify_report(dev, torch.float32, None, [], None, 0, None)
        print_report(rep)
        console.print("build and bench need a CUDA GPU: none is visible here, so only verify ran (on the CPU).")
        raise typer.Exit(0 if rep.ok else 1)
    build_cmd(arch=None, force=False, verbose=False)
    dev = _device("cuda")
    rep = _verify_report(dev, torch.float32, None, [], None, 0, None)
    print_report(rep)
    from mishbench.bench.plan import BenchOptions, parse_baselines
    from mishbench.bench.run import run_bench
    from mishbench.report import core as report_mod
    out = default_results_path()
    opts = BenchOptions(sizes=_sizes(None, "kernelbench"), dtype=torch.float32, precision=None,
                        modes=["fwd", "fwd_bwd"], baselines=parse_baselines(None, "kernelbench"),
                        warmup=10, iters=30, candidate=None, distributed=0, resume=False, out=out)
    code = run_bench(opts, console)
    if out.exists():
        report_mod.run_report([out], markdown=False, csv_out=None, plot=None, console=console)
    raise typer.Exit(1 if (code or not rep.ok) else 0)


def main():
    app()


if __name__ == "__main__":
    main()
