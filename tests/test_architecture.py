"""The house rules of docs/architecture.md, read off the source (imports inside functions included):
no import circle among mishbench modules, no arrow pointing up a floor (or sideways between packages of
one floor), no module using another's private names, and the candidate worker importing only torch, its
protocol and the clock, through `__init__.py` files that import nothing."""
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mishbench"

# Floor of each module (by name prefix, longest first); see docs/architecture.md.
FLOORS = {
    "mishbench": 0, "mishbench.clock": 0, "mishbench.schema": 0, "mishbench.shapes": 0,
    "mishbench.console": 0, "mishbench.envinfo": 0,
    "mishbench.op": 1, "mishbench.truth": 1, "mishbench.rounding": 1, "mishbench.inputs": 1,
    "mishbench.model": 1, "mishbench.reference": 1,  # public re-exports of mishbench.op
    "mishbench.candidate": 2, "mishbench.distributed": 2,
    "mishbench.verify": 3, "mishbench.bench": 3, "mishbench.report": 3,
    "mishbench.cli": 4, "mishbench.__main__": 4,
}
# Sideways arrows allowed within a floor: (from package, to package).
SIDEWAYS = {("mishbench.truth", "mishbench.op"), ("mishbench.rounding", "mishbench.op"),
            ("mishbench.truth", "mishbench.rounding"), ("mishbench.truth", "mishbench.inputs"),
            ("mishbench.inputs", "mishbench.rounding"), ("mishbench.console", "mishbench.schema"),
            ("mishbench.envinfo", "mishbench"), ("mishbench.model", "mishbench.op"),
            ("mishbench.reference", "mishbench.op"), ("mishbench.__main__", "mishbench.cli")}
WORKER = "mishbench.candidate.worker"
WORKER_MAY_IMPORT = {"mishbench.candidate.protocol", "mishbench.clock", "mishbench.candidate.environment",
                     "mishbench.candidate.observe"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, path: Path, known: Set[str]) -> List[Tuple[str, int]]:
    """(imported mishbench module, line) for every import statement in the file, functions included."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "mishbench"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node, path.name == "__init__.py")
            if target.split(".")[0] != "mishbench":
                continue
            for a in node.names:  # `from mishbench.op import ops` imports the module mishbench.op.ops
                sub = f"{target}.{a.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def floor_of(mod: str) -> Tuple[int, str]:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if mod == prefix or mod.startswith(prefix + "."):
            return FLOORS[prefix], prefix
    raise AssertionError(f"{mod}: not on any floor of docs/architecture.md; add it to FLOORS")


def graph() -> Dict[str, List[Tuple[str, int]]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_floor():
    for mod in modules():
        floor_of(mod)


def test_no_import_circle():
    g = {m: sorted({t for t, _ in edges if t in g_keys and t != m}) for g_keys in [set(graph())]
         for m, edges in graph().items()}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in g[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_arrows_point_down():
    bad = []
    for mod, edges in graph().items():
        f, pkg = floor_of(mod)
        for target, line in edges:
            g, tpkg = floor_of(target)
            if g > f or (g == f and pkg != tpkg and (pkg, tpkg) not in SIDEWAYS):
                bad.append(f"{mod}:{line} (floor {f}) imports {target} (floor {g})")
    assert not bad, "arrows that do not point down:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    mods = modules()
    bad = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                if target.split(".")[0] != "mishbench":
                    continue
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{mod}:{node.lineno} imports {target}.{a.name}")
                    if f"{target}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_candidate_worker_imports_only_torch_its_protocol_and_the_clock():
    mods = modules()
    seen, todo, bad = set(), [WORKER], []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for target, line in imports_of(mod, mods[mod], set(mods)):
            if mod == WORKER and target not in WORKER_MAY_IMPORT:
                bad.append(f"{mod}:{line} imports {target}")
            elif mod != WORKER and target != "mishbench":
                bad.append(f"{mod}:{line} (reached from the worker) imports {target}")
            todo.append(target)
        tree = ast.parse(mods[mod].read_text())
        others = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
        others |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        stdlib = getattr(sys, "stdlib_module_names", None)
        for root in others - {"mishbench", "torch", "__future__", ""}:
            if stdlib is not None and root not in stdlib:
                bad.append(f"{mod} imports {root} (not torch, not the standard library)")
    for init in ("mishbench", "mishbench.candidate"):
        tree = ast.parse(mods[init].read_text())
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)):
            bad.append(f"{init}/__init__.py imports something (it is on the worker's path)")
    assert not bad, "\n".join(bad)


def test_files_stay_small():
    big = []
    for p in PACKAGE.rglob("*.py"):
        n = len(p.read_text().splitlines())
        if n > 450:
            big.append(f"{module_name(p)}: {n} lines")
    assert not big, "files past ~400 lines (split by responsibility):\n" + "\n".join(big)
