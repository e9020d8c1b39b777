"""`mishbench report --plot PATH.png`: the pictures of a set of result CSVs (matplotlib, the `plot` extra).

- PATH.png: the KernelBench shape (or the most measured one): one panel per dtype/precision, one group of
  bars per mode, a bar per provider (eager, compile, mishbench, candidate) with its speedup vs eager on it.
- PATH-sweep.png (where some accuracy class was measured at 3 or more shapes): one panel per accuracy
  class, speedup vs eager against shape (ordered by FLOPs), markers only where a series was measured, lines
  only between neighbouring measured shapes, and a line at 1×.
- PATH-roofline.png (where rows carry TFLOP/s and % of peak): achieved TFLOP/s against arithmetic
  intensity (FLOPs per byte of the minimum traffic: x, W, b read, y written; the backward's too), under the
  compute ceilings measured in the same run (peak = TFLOP/s / (% of peak / 100)).

One colour per provider in every picture.
"""
import importlib.util
import math
from pathlib import Path
from typing import Dict, List, Tuple

from mishbench.schema import BASELINE_IMPLS

COLOURS = {"eager": "#7f7f7f", "compile": "#1f77b4", "compile-max": "#17becf", "mishbench": "#d62728",
           "candidate": "#2ca02c"}
PROVIDERS = ("eager", "compile", "compile-max", "mishbench", "candidate")
MARKERS = {"ieee": "o", "3xtf32": "D", "tf32": "^", "native": "s"}
KERNELBENCH = "1024x8192x8192"
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def provider(impl: str) -> str:
    return "mishbench" if impl == "composite" else impl


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}-{suffix}{path.suffix or '.png'}")


def plot_all(df, records: List[Dict[str, object]], path: Path) -> List[Path]:
    """Every picture the data has; the paths written. `records`: report.core.compact() of df's ok rows."""
    ok = df[df["status"] == "ok"]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    plt = _pyplot()
    for name, draw in ((path, _bars), (sibling(path, "sweep"), _sweep), (sibling(path, "roofline"), _roofline)):
        fig = draw(plt, ok, records)
        if fig is None:
            continue
        try:
            fig.savefig(str(name), dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        written.append(name)
    return written


def _ms_columns(rec: Dict[str, object]) -> List[Tuple[str, float]]:
    return [(p, rec[f"{p} ms"]) for p in PROVIDERS  # type: ignore[misc]
            if isinstance(rec.get(f"{p} ms"), float) and not math.isnan(rec[f"{p} ms"])]  # type: ignore[arg-type]


def _bars(plt, ok, records):
    """Bars at the KernelBench shape (else the shape with the most records)."""
    if not records:
        return None
    shapes = [r["shape"] for r in records]
    shape = KERNELBENCH if KERNELBENCH in shapes else max(set(shapes), key=shapes.count)
    recs = [r for r in records if r["shape"] == shape]
    multi_gpu = len({r["gpu"] for r in recs}) > 1
    prec_order = ("3xtf32", "ieee", "tf32", "native")
    configs = sorted(dict.fromkeys((r["gpu"], r["dtype"], r["precision"]) for r in recs),
                     key=lambda c: (c[0], _class_order(c[1]), prec_order.index(c[2]) if c[2] in prec_order else 9))
    ncols = min(3, len(configs))
    nrows = int(math.ceil(len(configs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(configs):]:
        ax.set_visible(False)
    for ax, (gpu, dtype, prec) in zip(axes.flat, configs):
        mine = [r for r in recs if (r["gpu"], r["dtype"], r["precision"]) == (gpu, dtype, prec)]
        modes = [r["mode"] for r in mine]
        present = [p for p in PROVIDERS if any(p in dict(_ms_columns(r)) for r in mine)]
        width = 0.8 / max(1, len(present))
        top = 0.0
        for j, p in enumerate(present):
            for i, r in enumerate(mine):
                ms = dict(_ms_columns(r)).get(p)
                if ms is None:
                    continue
                x = i + (j - (len(present) - 1) / 2) * width
                ax.bar(x, ms, width * 0.92, color=COLOURS[p], label=p if i == 0 else None)
                speed = r.get(f"{p} ×eager") if p not in BASELINE_IMPLS else None
                eager = dict(_ms_columns(r)).get("eager")
                if speed is None or (isinstance(speed, float) and math.isnan(speed)):
                    speed = eager / ms if eager else None
                if speed is not None:
                    ax.text(x, ms, f"{speed:.2f}×", ha="center", va="bottom", fontsize=8,
                            fontweight="bold" if p not in BASELINE_IMPLS else "normal")
                top = max(top, ms)
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(modes)
        ax.set_ylim(0, top * 1.18 if top else 1)
        ax.set_ylabel("median ms (lower is better)")
        label = f"{dtype}" + (f" {prec}" if prec != "native" else "")
        ax.set_title(label + (f"\n{gpu}" if multi_gpu else ""), fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb, h)
    order = [p for p in PROVIDERS if p in handles]
    fig.legend([handles[p] for p in order], order, loc="upper center", ncol=len(order), frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    gpus = sorted({str(r["gpu"]) for r in recs})
    fig.suptitle(f"{shape} (B×K×N) · {', '.join(gpus)} · speedup vs eager on each bar", y=1.04, fontsize=11)
    fig.tight_layout()
    return fig


def _shape(r) -> Tuple[int, int, int]:
    return int(r["batch"]), int(r["in_features"]), int(r["out_features"])


def _sweep(plt, ok, records):
    """Speedup vs eager against shape: one panel per accuracy class, the series measured at >= 3 shapes."""
    by_class: Dict[str, Dict[tuple, Dict[Tuple[int, int, int], float]]] = {}
    for _, r in ok[~ok["impl"].isin(BASELINE_IMPLS)].iterrows():
        if isinstance(r["speedup_vs_eager"], float) and math.isnan(r["speedup_vs_eager"]):
            continue
        key = (provider(r["impl"]), r["precision"], r["mode"])
        by_class.setdefault(str(r["accuracy_class"]), {}).setdefault(key, {})[_shape(r)] = float(r["speedup_vs_eager"])
    panels = [(k, {key: pts for key, pts in series.items() if len(pts) >= 3}) for k, series in by_class.items()]
    panels = sorted([(k, ser) for k, ser in panels if ser], key=lambda kv: _class_order(kv[0]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    for ax, (accuracy, series) in zip(axes.flat, panels):
        # Shapes grouped by K×N, then by batch: each group's points are joined, groups are not.
        shapes = sorted({s for pts in series.values() for s in pts}, key=lambda s: (s[1] * s[2], s[1], s[0]))
        xpos = {s: i for i, s in enumerate(shapes)}
        for (prov, prec, mode), pts in sorted(series.items()):
            xs = sorted(xpos[s] for s in pts)
            ys = {xpos[s]: v for s, v in pts.items()}
            colour = COLOURS.get(prov, "black")
            hollow = mode != "fwd"
            ax.plot(xs, [ys[x] for x in xs], linestyle="none", marker=MARKERS.get(prec, "o"), markersize=7,
                    color=colour, markerfacecolor="white" if hollow else colour, label=f"{prov} {prec} {mode}")
            # Lines only between neighbouring measured shapes of one K×N group: never across a gap.
            for a, b in zip(xs, xs[1:]):
                if b == a + 1 and shapes[a][1:] == shapes[b][1:]:
                    ax.plot([a, b], [ys[a], ys[b]], color=colour, alpha=0.5, linewidth=1.2,
                            linestyle="--" if hollow else "-")
        for i in range(1, len(shapes)):
            if shapes[i][1:] != shapes[i - 1][1:]:
                ax.axvline(i - 0.5, color="black", alpha=0.15, linewidth=1)
        ax.axhline(1.0, color=COLOURS["eager"], linewidth=1, linestyle=":")
        ax.text(len(shapes) - 0.55, 1.0, "eager = 1×", color=COLOURS["eager"], fontsize=8, ha="right",
                va="bottom")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([f"{b}x{k}x{n}" for b, k, n in shapes], rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(shapes) - 0.5)
        ax.set_xlabel("shape B×K×N (grouped by K×N, batch rising)")
        ax.set_ylabel("speedup vs eager (same accuracy class)")
        ax.set_title(f"accuracy class {accuracy}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def _class_order(name: str):
    order = ("fp32", "tf32", "bf16", "fp16", "fp64")
    return (order.index(name) if name in order else 9, name)


def traffic_bytes(b: int, k: int, n: int, dtype: str, mode: str) -> float:
    """Minimum bytes moved: forward reads x, W, b and writes y; the backward also reads dy, z, x, W and
    writes dx, dW, db."""
    s = BYTES.get(dtype, 4)
    fwd = b * k + k * n + n + b * n
    bwd = 2 * b * n + b * k + k * n + b * k + k * n + n
    return float(s * (fwd + (bwd if mode == "fwd_bwd" else 0)))


def _roofline(plt, ok, records):
    rows = ok[ok["tflops"].notna() & ok["pct_of_peak"].notna() & (ok["pct_of_peak"] > 0) & (ok["tflops"] > 0)]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 6))
    ceilings: Dict[str, float] = {}
    seen_labels = set()
    xs_all = []
    for _, r in rows.iterrows():
        flops = r["tflops"] * 1e12 * r["median_ms"] * 1e-3
        intensity = flops / traffic_bytes(int(r["batch"]), int(r["in_features"]), int(r["out_features"]),
                                          r["dtype"], r["mode"])
        xs_all.append(intensity)
        prov = provider(r["impl"])
        kind = r["dtype"] if r["dtype"] != "fp32" else ("tf32÷3" if r["precision"] == "3xtf32" else
                                                        "tf32" if r["precision"] == "tf32" else "fp32")
        peak = r["tflops"] / (r["pct_of_peak"] / 100.0)
        ceilings[kind] = max(ceilings.get(kind, 0.0), peak)
        seen_labels.add(prov)
        ax.scatter([intensity], [r["tflops"]], color=COLOURS.get(prov, "black"),
                   marker=MARKERS.get(r["precision"], "o"), s=36, alpha=0.85, edgecolors="none")
    lo, hi = min(xs_all) / 2, max(xs_all) * 2
    merged: List[Tuple[List[str], float]] = []  # ceilings within 5 % of each other share one line
    for kind, peak in sorted(ceilings.items(), key=lambda kv: -kv[1]):
        if merged and merged[-1][1] <= peak * 1.05:
            merged[-1][0].append(kind)
        else:
            merged.append(([kind], peak))
    for kinds, peak in merged:
        ax.hlines(peak, lo, hi, colors="black", linestyles="--", linewidth=0.8, alpha=0.6)
        ax.text(lo * 1.1, peak * 1.04, f"{'/'.join(kinds)} peak {peak:.0f} TFLOP/s (measured)", fontsize=8,
                va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of minimum traffic)")
    ax.set_ylabel("achieved TFLOP/s")
    gpus = sorted(rows["gpu"].unique())
    ax.set_title(f"roofline · {', '.join(str(g) for g in gpus)} · compute ceilings measured in the runs "
                 "(no bandwidth ceiling is measured)", fontsize=10)
    ax.grid(True, which="both", alpha=0.2)
    from matplotlib.lines import Line2D
    labels = [p for p in PROVIDERS if p in seen_labels]
    handles = [Line2D([], [], linestyle="none", marker="o", color=COLOURS[p]) for p in labels]
    precs = [p for p in MARKERS if p in set(rows["precision"])]
    handles += [Line2D([], [], linestyle="none", marker=MARKERS[p], color="black") for p in precs]
    labels += [f"marker: {p}" for p in precs]
    ax.legend(handles, labels, fontsize=8, loc="lower right", frameon=False)
    fig.tight_layout()
    return fig
