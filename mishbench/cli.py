"""The `mishbench` command line: parses flags, calls the modules that do the work, prints.

Exit codes everywhere: 0 success, 1 a check failed or the work failed, 2 usage error (bad flag, bad
--sizes, missing file) with a one-line message naming the bad value.
"""
import datetime
import sys
from pathlib import Path
from typing import List, Optional

import typer

from mishbench import names, outfiles
from mishbench.console import console, err_console, print_mapping, print_report, usage_error
from mishbench.op import toolchain

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Verify and benchmark a fused Linear -> Mish -> Mish CUDA op (KernelBench L2/29).")

USAGE = 2


def _usage(message: str) -> "typer.Exit":
    usage_error(message)
    return typer.Exit(USAGE)


def _checked(flag: str, fn, *args):
    """Run a torch-free validator from mishbench.names / shapes; a ValueError is a usage error naming the flag."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise _usage(f"{flag}: {exc}") from None


def _sizes(sizes: Optional[List[str]], preset: Optional[str] = None):
    from mishbench.shapes import parse_preset, parse_sizes
    try:
        out = parse_sizes(sizes or [])
        if preset:
            out += [s for s in parse_preset(preset) if s not in out]
    except ValueError as exc:
        raise _usage(f"--sizes/--preset: {exc}") from None
    return out


def _torch_dtype(name: str):
    """After validation: torch is imported from here on (seconds on a small machine)."""
    from mishbench.op.precision import parse_dtype
    return parse_dtype(name)


def _device(name: str):
    _checked("--device", names.check_device, name)
    toolchain.export_cuda_home()
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
    """Created (and removed again) before any work, so that a bad output path fails now, not after a run."""
    if path is not None:
        try:
            outfiles.check_writable(path, flag)
        except ValueError as exc:
            raise _usage(str(exc)) from None
    return path


@app.command()
def info():
    """GPU, driver, CUDA runtime, nvcc, torch, Python, arch list and extension build status."""
    toolchain.export_cuda_home()
    from mishbench.op import build
    from mishbench import envinfo
    rows = envinfo.describe()
    status = build.status()
    rows.update({f"extension {k}": str(v) for k, v in status.items()})
    print_mapping("mishbench info", rows)


ARCH_FORMS = ('a list like "8.0;9.0a": each item MAJOR.MINOR with an optional a/f suffix and +PTX '
              '(8.0, 9.0a, 8.6+PTX; also sm_90a or 90a), separated by ";", "," or spaces')
MAX_BUILD_ERRORS = 20


@app.command("build")
def build_cmd(arch: Optional[str] = typer.Option(None, help='CUDA archs, e.g. "8.0;9.0a" (default: the GPU\'s)'),
              force: bool = typer.Option(False, "--force", help="rebuild even if cached"),
              verbose: bool = typer.Option(False, "--verbose", help="show the compiler's output")):
    """Compile csrc/ into the extension cache (works with nvcc and no GPU when --arch is given)."""
    if arch is not None:
        try:
            toolchain.parse_arch_list(arch)
        except ValueError as exc:
            raise _usage(f"--arch: {exc}; expected {ARCH_FORMS}") from None
    toolchain.export_cuda_home()
    from mishbench.op import build
    with console.status("building the CUDA extension…") as spinner:
        result = build.build(arch=arch, force=force, verbose=verbose,
                             progress=lambda msg: spinner.update(f"building: {msg}"))
    if not result.ok:
        console.print(f"[bold red]build failed[/] ({result.seconds:.1f} s): {result.reason}", highlight=False,
                      soft_wrap=True)
        if result.errors:
            shown = result.errors[:MAX_BUILD_ERRORS]
            console.print(f"first {len(shown)} compiler error(s):", highlight=False)
            for line in shown:
                console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        if result.log_path:
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
           json_path: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON ('-': to "
                                                                         "stdout, the table to stderr)")):
    """Check a ModelNew (ours, or --candidate) against the reference Model."""
    # Every flag is checked before torch is imported: a usage error answers at once.
    _checked("--dtype", names.check_dtype, dtype)
    _checked("--precision", names.check_precision, precision, dtype)
    size_list = _sizes(sizes)
    _checked("--device", names.check_device, device)
    _existing_file(candidate, "--candidate")
    if distributed < 0:
        raise _usage(f"--distributed: must be >= 0, got {distributed}")
    if candidate is not None and distributed:
        # The DDP/FSDP checks train mishbench's own ModelNew in torchrun workers; a candidate only ever runs
        # in its isolated worker process, so their rows would describe the wrong model.
        raise _usage("--candidate with --distributed: the distributed checks run mishbench's own ModelNew, "
                     "not a candidate; run them separately")
    to_stdout = json_path is not None and str(json_path) == outfiles.STDOUT
    _writable_file(json_path, "--json")
    out = err_console if to_stdout else console
    dev = _device(device)
    report = _verify_report(dev, _torch_dtype(dtype), precision, size_list, candidate, distributed, seed, out)
    print_report(report, out, strict=strict)
    if to_stdout:
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
    elif json_path is not None:
        where = _save(json_path, report.to_json() + "\n", "--json", out)
        if where is None:
            raise typer.Exit(1)
        out.print(f"JSON report: {where}", highlight=False, soft_wrap=True)
    if not report.ok or (strict and not report.complete):
        raise typer.Exit(1)


def _save(path: Path, text: str, flag: str, out) -> Optional[Path]:
    """Write `text`; when that fails, keep it in a sibling (or temporary) file and say where. None: not
    written where asked (the caller exits 1)."""
    try:
        where = outfiles.write_with_fallback(path, lambda p: p.write_text(text))
    except OSError as exc:
        usage_error(f"{flag}: cannot write {str(path)!r}: {exc.strerror or exc}; nothing could be kept")
        return None
    if where != path:
        usage_error(f"{flag}: cannot write {str(path)!r}; what was measured is kept in {str(where)!r}")
        return None
    return where


def _verify_report(dev, torch_dtype, precision, size_list, candidate, distributed, seed, out=console):
    from mishbench.verify import core as verify_mod
    progress = None
    with out.status("verifying…") as spinner:
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
    _checked("--dtype", names.check_dtype, dtype)
    _checked("--precision", names.check_precision, precision, dtype)
    if sizes and preset:
        raise _usage("--sizes and --preset: give one or the other")
    size_list = _sizes(sizes, None if sizes else (preset or "kernelbench"))
    mode = _checked("--mode", names.check_mode, mode or ("fwd_bwd" if distributed else "fwd"))
    _existing_file(candidate, "--candidate")
    if warmup < 0 or iters < 1:
        raise _usage(f"--warmup/--iters: must be >= 0 and >= 1, got {warmup} and {iters}")
    if distributed < 0:
        raise _usage(f"--distributed: must be >= 0, got {distributed}")
    base = _checked("--baselines", names.parse_baselines, baselines,
                    preset or ("custom" if sizes else "kernelbench"))
    out = _writable_file(out or default_results_path(), "--out")
    toolchain.export_cuda_home()
    from mishbench.bench import plan as plan_mod
    from mishbench.bench.run import run_bench
    opts = plan_mod.BenchOptions(sizes=size_list, dtype=_torch_dtype(dtype), precision=precision,
                                 modes=["fwd", "fwd_bwd"] if mode == "all" else [mode], baselines=base,
                                 warmup=warmup, iters=max(iters, 1), candidate=candidate,
                                 distributed=distributed, resume=resume, out=out)
    raise typer.Exit(run_bench(opts, console))


@app.command()
def report(csvs: List[Path] = typer.Argument(None, help="result CSVs (default: results/*.csv)"),
           markdown: bool = typer.Option(False, "--markdown", help="print every column as a Markdown table"),
           csv_out: Optional[Path] = typer.Option(None, "--csv", help="write the merged table (every column) as CSV"),
           plot: Optional[Path] = typer.Option(None, help="write PLOT.png (the KernelBench shape) and, where the "
                                                          "data has them, PLOT-sweep.png and PLOT-roofline.png")):
    """Merge result CSVs: on the terminal the columns that fit; --markdown / --csv keep every column."""
    paths = list(csvs or sorted(Path("results").glob("*.csv")))
    if not paths:
        raise _usage("no result CSVs given and none under results/")
    for p in paths:
        _existing_file(p, "CSV")
    _writable_file(csv_out, "--csv")
    _writable_file(plot, "--plot")
    from mishbench.report import core as report_mod
    raise typer.Exit(report_mod.run_report(paths, markdown=markdown, csv_out=csv_out, plot=plot, console=console))


def default_results_path() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}.csv"


@app.command()
def run():
    """The main job: build, verify, bench --preset kernelbench and report (verify alone without a GPU)."""
    toolchain.export_cuda_home()
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
