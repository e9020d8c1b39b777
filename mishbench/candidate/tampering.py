"""`static_tampering`: the source reaching for what judges it (DESIGN.md, "Candidates: where the judge
stands"). Reads the AST only, runs nothing.

fail: assigning to a clock or timing API (time.perf_counter, torch.cuda.Event.elapsed_time,
torch.cuda.synchronize, ...), directly, through an alias (`E = torch.cuda.Event; E.record = f`,
`t = importlib.import_module("time")`), setattr/delattr or mock.patch; and frame or heap introspection
(sys._getframe, inspect.currentframe/stack, gc.get_objects/get_referrers, frame attributes, trace hooks).
warn: tensor subclasses, __torch_function__/__torch_dispatch__ and torch function/dispatch modes, threads.
The harness does not depend on any of this (its clock and judge are out of reach); the row tells a
reviewer that the code tried.
"""
import ast
from typing import Dict, List, Optional, Tuple

from mishbench.schema import Check

NAME = "static_tampering"
# Modules and objects whose attributes are clocks, timers or what timings synchronise on.
TIMING_ROOTS = ("time", "timeit", "torch.cuda.Event", "torch.cuda.Stream", "torch.cuda.streams",
                "torch.cuda.events", "torch.cuda.synchronize", "torch.cuda.current_stream",
                "torch.cuda.default_stream", "torch.cuda.stream", "torch.cuda.Event.elapsed_time",
                "torch.cuda.Event.record", "torch.cuda.Event.synchronize", "torch.cpu.synchronize",
                "torch.utils.benchmark", "torch.profiler", "torch.autograd.profiler", "torch.cuda.nvtx",
                "datetime", "torch._C._cuda_synchronize", "torch.cuda.Event.query")
# Names whose reach is the caller's frames or every live object.
INTROSPECTION = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.gettrace",
                 "inspect.currentframe", "inspect.stack", "inspect.getouterframes", "inspect.trace",
                 "inspect.getinnerframes", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                 "threading.settrace", "threading.setprofile", "traceback.walk_stack", "traceback.extract_stack",
                 "traceback.print_stack", "traceback.format_stack", "ctypes.pythonapi")
FRAME_ATTRS = ("f_back", "f_locals", "f_globals", "f_code", "tb_frame", "gi_frame", "cr_frame", "f_builtins")
SUBCLASS_HOOKS = ("__torch_function__", "__torch_dispatch__", "_make_subclass", "_make_wrapper_subclass",
                  "as_subclass")
MODES = ("torch.overrides.TorchFunctionMode", "torch.utils._python_dispatch.TorchDispatchMode")
THREADS = ("threading", "_thread", "concurrent.futures", "multiprocessing", "torch.multiprocessing",
           "os.fork", "os.register_at_fork", "asyncio")
MODULE_LOADERS = ("importlib.import_module", "__import__")


def dotted(node) -> str:
    """'torch.cuda.amp.custom_fwd' for an Attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _const(node) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Names:
    """Local names -> what they stand for: imports, plain aliases (`E = torch.cuda.Event`) and modules
    loaded by name (`importlib.import_module("time")`, `sys.modules["time"]`), to a fixed point."""

    def __init__(self, tree: ast.Module):
        self.map: Dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.map[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.map[a.asname or a.name] = f"{node.module}.{a.name}"
        assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
                   and isinstance(n.targets[0], ast.Name)]
        for _ in range(3):  # aliases of aliases
            for node in assigns:
                full = self.value(node.value)
                if full:
                    self.map[node.targets[0].id] = full

    def resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        full = self.map.get(head, head)
        return f"{full}.{rest}" if rest else full

    def value(self, node) -> str:
        """What an expression names: a dotted name, a module loaded by name, or getattr(obj, 'const')."""
        if isinstance(node, (ast.Attribute, ast.Name)):
            d = dotted(node)
            if d:
                return self.resolve(d)
            base = self.value(node.value) if isinstance(node, ast.Attribute) else ""
            return f"{base}.{node.attr}" if base else ""  # sys.modules["time"].time
        if isinstance(node, ast.Call):
            fn = self.resolve(dotted(node.func))
            if fn in MODULE_LOADERS and node.args and _const(node.args[0]):
                return str(_const(node.args[0]))
            if fn == "getattr" and len(node.args) >= 2 and _const(node.args[1]):
                base = self.value(node.args[0])
                return f"{base}.{_const(node.args[1])}" if base else ""
        if isinstance(node, ast.Subscript) and self.resolve(dotted(node.value)) == "sys.modules":
            index = getattr(ast, "Index", None)  # Python 3.8 wraps a subscript in ast.Index
            key = node.slice.value if index is not None and isinstance(node.slice, index) else node.slice
            return _const(key) or ""
        return ""


def _under(full: str, roots) -> Optional[str]:
    for root in roots:
        if full == root or full.startswith(root + "."):
            return root
    return None


def _timing_target(full: str) -> bool:
    return bool(full) and _under(full, TIMING_ROOTS) is not None and full not in ("time", "timeit", "datetime")


def findings(tree: ast.Module) -> Tuple[List[str], List[str]]:
    """(fail findings, warn findings), each 'line N: what'."""
    names = _Names(tree)
    fails: List[str] = []
    warns: List[str] = []

    def add(bucket: List[str], node, text: str) -> None:
        item = f"line {getattr(node, 'lineno', 0)}: {text}"
        if item not in bucket:
            bucket.append(item)

    for node in ast.walk(tree):
        # Assignments (also augmented, annotated, deleted) to an attribute of a timing object.
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute):
                    full = names.value(sub)
                    if _timing_target(full):
                        add(fails, node, f"assigns to {full} (a clock or timing API)")
                elif isinstance(sub, ast.Subscript):
                    base = dotted(sub.value)
                    if base.endswith("__dict__") or names.resolve(base) in ("vars", "sys.modules"):
                        obj = names.resolve(base[: -len(".__dict__")]) if base.endswith(".__dict__") else ""
                        if _under(obj, TIMING_ROOTS) or _under(obj, ("sys", "inspect", "gc")):
                            add(fails, node, f"writes into {obj}.__dict__")
        if isinstance(node, ast.Call):
            fn = names.resolve(dotted(node.func))
            if fn in ("setattr", "delattr") and node.args:
                obj = names.value(node.args[0])
                attr = _const(node.args[1]) if len(node.args) > 1 else None
                if obj and _under(obj, TIMING_ROOTS):
                    add(fails, node, f"{fn}({obj}, {attr!r}) on a clock or timing API")
            if fn.split(".")[-1] in ("patch", "object") and ("mock" in fn):
                target = _const(node.args[0]) if node.args else None
                obj = names.value(node.args[0]) if node.args and target is None else ""
                if (target and _timing_target(target)) or (obj and _under(obj, TIMING_ROOTS)):
                    add(fails, node, f"{fn} of a clock or timing API")
            if fn == "getattr" and node.args and len(node.args) > 1:
                obj = names.value(node.args[0])
                attr = _const(node.args[1])
                if obj and attr and f"{obj}.{attr}" in INTROSPECTION:
                    add(fails, node, f"getattr({obj}, {attr!r}): frame or heap introspection")
                if attr in FRAME_ATTRS:
                    add(fails, node, f"reads the frame attribute {attr}")
        if isinstance(node, (ast.Attribute, ast.Name)):
            full = names.value(node)
            hit = _under(full, INTROSPECTION)
            if hit:
                add(fails, node, f"{hit}: frame or heap introspection")
            if isinstance(node, ast.Attribute) and node.attr in FRAME_ATTRS:
                add(fails, node, f"reads the frame attribute {node.attr}")
            if _under(full, MODES):
                add(warns, node, f"{full.rsplit('.', 1)[-1]}: a torch function/dispatch mode")
            thread = _under(full, THREADS)
            if thread and not isinstance(getattr(node, "ctx", None), ast.Store):
                add(warns, node, f"uses {thread} (threads or processes)")
            if isinstance(node, ast.Attribute) and node.attr in SUBCLASS_HOOKS:
                add(warns, node, f"{node.attr}: tensor subclass machinery")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod == "__main__":
                    add(fails, node, "imports __main__ (the harness's own module in the candidate's process)")
                thread = _under(mod, THREADS)
                if thread:
                    add(warns, node, f"imports {thread} (threads or processes)")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in SUBCLASS_HOOKS:
            add(warns, node, f"defines {node.name}")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                full = names.value(base)
                if full in ("torch.Tensor", "torch._C.TensorBase", "torch._C._TensorBase", "torch.nn.Parameter"):
                    add(warns, node, f"class {node.name} subclasses {full}")
                elif _under(full, MODES):
                    add(warns, node, f"class {node.name} is a {full.rsplit('.', 1)[-1]}")
    key = lambda item: int(item.split(":")[0].split()[1])  # noqa: E731
    return sorted(fails, key=key), sorted(warns, key=key)


def check_tampering(parsed) -> Check:
    """`parsed` is a static.Parsed."""
    if parsed.tree is None:
        return Check(NAME, "skip", f"not parsed ({parsed.syntax_error})")
    fails, warns = findings(parsed.tree)
    if fails:
        return Check(NAME, "fail", "the code reaches for what judges it: " + "; ".join(fails[:4])
                     + (f" (+{len(fails) - 4} more)" if len(fails) > 4 else ""))
    if warns:
        return Check(NAME, "warn", "worth a reviewer's look: " + "; ".join(warns[:4])
                     + (f" (+{len(warns) - 4} more)" if len(warns) > 4 else ""))
    return Check(NAME, "pass", "no assignment to clocks or timing APIs, no frame or heap introspection, no "
                               "tensor subclass, torch mode or thread")
