"""Static checks of a candidate's source: read the AST and the inline C++/CUDA strings, run nothing.

`static_inputs_unchanged`, `static_imports`, `static_deprecated`, `static_fallback` (`static_tampering` is in
tampering.py), plus the facts the other checks need: whether the file has a custom kernel at all, and where
each string constant (an inline source) starts, so compiler errors map back to lines of the candidate file.
"""
import ast
import importlib.util
import re
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from mishbench.candidate.tampering import check_tampering, dotted
from mishbench.schema import Check

REFERENCE_FILE = Path(__file__).resolve().parents[1] / "op" / "reference.py"
INPUT_FUNCS = ("get_inputs", "get_init_inputs")
INPUT_GLOBALS = ("batch_size", "in_features", "out_features")
ALLOWED_ROOTS = {"torch", "__future__"}
KERNEL_BUILDERS = {"load_inline", "load"}

# C++/CUDA APIs removed or deprecated in libtorch; each with the replacement a person can apply.
DEPRECATED_CPP = [
    (re.compile(r"\.type\(\)"), "Tensor::type() (use .scalar_type() / .device() / .options())"),
    (re.compile(r"\bAT_CHECK\s*\("), "AT_CHECK (use TORCH_CHECK)"),
    (re.compile(r"\.data\s*<\s*\w[\w:]*\s*>\s*\("), "Tensor::data<T>() (use .data_ptr<T>())"),
    (re.compile(r"\bTHC\w*\b|#\s*include\s*[<\"]THC/"), "THC API (removed: use ATen / c10::cuda)"),
    (re.compile(r"\bcudaThreadSynchronize\b"), "cudaThreadSynchronize (use cudaDeviceSynchronize)"),
    (re.compile(r"\.packed_accessor\s*<"), "packed_accessor<> (use packed_accessor32/64)"),
    (re.compile(r"\bat::Type\b|\bDeprecatedTypeProperties\b"), "at::Type (use at::ScalarType / TensorOptions)"),
]
# Python APIs: dotted names as written (after `import torch` / `import torch.nn.functional as F`).
DEPRECATED_PY = {
    "torch.cuda.amp.custom_fwd": "torch.amp.custom_fwd(device_type='cuda')",
    "torch.cuda.amp.custom_bwd": "torch.amp.custom_bwd(device_type='cuda')",
    "torch.cuda.amp.autocast": "torch.autocast('cuda')",
    "torch.cuda.amp.GradScaler": "torch.amp.GradScaler('cuda')",
    "torch.testing.assert_allclose": "torch.testing.assert_close",
    "torch.autograd.Variable": "plain tensors",
    "torch.set_default_tensor_type": "torch.set_default_dtype / device",
    "torch.nn.utils.stateless.functional_call": "torch.func.functional_call",
    "torch.cuda.FloatTensor": "torch.empty(..., device='cuda')",
    "torch.cuda.HalfTensor": "torch.empty(..., dtype=torch.half, device='cuda')",
    "torch.range": "torch.arange",
    "torch.chain_matmul": "torch.linalg.multi_dot",
    "torch.symeig": "torch.linalg.eigh",
    "torch.solve": "torch.linalg.solve",
    "torch._six": "the standard library",
}


class Parsed:
    """The source, its AST (None on a syntax error) and the error.

    line_offset: the candidate-file line where `source` starts, minus 1 (a code block of a markdown answer):
    every line number in the AST and in the findings is then a line of the file the user gave."""

    def __init__(self, source: str, line_offset: int = 0):
        self.source = source
        self.tree: Optional[ast.Module] = None
        self.syntax_error = ""
        try:
            self.tree = ast.parse(source)
            if line_offset:
                ast.increment_lineno(self.tree, line_offset)
        except SyntaxError as exc:
            self.syntax_error = f"line {(exc.lineno or 0) + line_offset}: SyntaxError: {exc.msg}"

    def strings(self) -> List[Tuple[int, str]]:
        """(first line, value) of every string constant of 40+ characters: inline C++/CUDA lives here."""
        if self.tree is None:
            return []
        out = []
        for node in ast.walk(self.tree):
            value = _const_str(node)
            if value is not None and len(value) >= 40:
                out.append((node.lineno, value))
        return out


def _const_str(node) -> Optional[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _aliases(tree: ast.Module) -> Dict[str, str]:
    """Local name -> full dotted module/object name, from every import in the file."""
    out: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _resolve(name: str, aliases: Dict[str, str]) -> str:
    head, _, rest = name.partition(".")
    full = aliases.get(head, head)
    return f"{full}.{rest}" if rest else full


# ------------------------------------------------------------------------------------- custom kernel
def kernel_usage(parsed: Parsed) -> List[str]:
    """What custom-kernel machinery the file uses ('load_inline', 'cpp_extension', 'triton', 'torch.ops',
    'torch.library', 'ctypes'); empty for plain PyTorch."""
    if parsed.tree is None:
        return []
    aliases = _aliases(parsed.tree)
    found: Set[str] = set()
    for node in ast.walk(parsed.tree):
        name = ""
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = _resolve(dotted(node), aliases)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            name = " ".join(mods)
        for key, label in (("cpp_extension.load_inline", "load_inline"), ("cpp_extension", "cpp_extension"),
                           ("triton", "triton"), ("torch.ops.", "torch.ops"), ("torch.library", "torch.library"),
                           ("ctypes", "ctypes"), ("cupy", "cupy"), ("numba", "numba")):
            if key in name:
                found.add(label)
    if "load_inline" in found:
        found.discard("cpp_extension")
    return sorted(found)


def uses_cuda(parsed: Parsed) -> bool:
    """A CUDA kernel that cannot run on the CPU: inline CUDA sources, Triton, or .cu files."""
    usage = kernel_usage(parsed)
    if "triton" in usage:
        return True
    if parsed.tree is None:
        return False
    for node in ast.walk(parsed.tree):
        if isinstance(node, ast.keyword) and node.arg == "cuda_sources":
            return True
        value = _const_str(node)
        if value is not None and (value.endswith(".cu") or "__global__" in value):
            return True
    return False


# -------------------------------------------------------------------------------------------- checks
def check_inputs_unchanged(parsed: Parsed) -> Check:
    name = "static_inputs_unchanged"
    if parsed.tree is None:
        return Check(name, "skip", f"not parsed ({parsed.syntax_error})")
    ref = ast.parse(REFERENCE_FILE.read_text())
    mine, theirs = _input_defs(parsed.tree), _input_defs(ref)
    defined = [f for f in INPUT_FUNCS if f in mine]
    if not defined:
        return Check(name, "pass", "defines neither get_inputs nor get_init_inputs (the harness draws its own)")
    changed = [f for f in defined if mine[f] != theirs[f]]
    for g in INPUT_GLOBALS:
        if g in mine and mine[g] != theirs[g]:
            changed.append(f"{g} = {mine[g]}")
    if changed:
        return Check(name, "fail", f"differs from the reference (mishbench/reference.py): {', '.join(changed)}; "
                                   "KernelBench's get_inputs/get_init_inputs must stay as they are")
    return Check(name, "pass", f"{', '.join(defined)} match the reference's AST")


def _input_defs(tree: ast.Module) -> Dict[str, str]:
    """What each of INPUT_FUNCS and INPUT_GLOBALS is bound to at module level (the last binding wins), as a
    comparable string: a def's body, an assigned value -- also through `a, b, c = 1, 2, 3`, annotated,
    augmented (`batch_size *= 2`) or rebound (`get_inputs = lambda: ...`) -- or an import."""
    out: Dict[str, str] = {}
    watched = set(INPUT_FUNCS) | set(INPUT_GLOBALS)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in watched:
            body = node.body
            if body and isinstance(body[0], ast.Expr) and _const_str(body[0].value) is not None:
                body = body[1:]  # a docstring is not a change
            kind = "" if isinstance(node, ast.FunctionDef) else type(node).__name__ + " "
            out[node.name] = kind + ast.dump(ast.Module(body=body, type_ignores=[]))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if node.value is None:
                continue  # `batch_size: int` binds nothing
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            op = type(node.op).__name__ + "= " if isinstance(node, ast.AugAssign) else ""
            for target in targets:
                for name, value in _bindings(target, node.value):
                    if name in watched:
                        out[name] = op + value
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if bound in watched:
                    out[bound] = f"imported {alias.name}" + (f" from {node.module}" if isinstance(node, ast.ImportFrom)
                                                             else "")
    return out


def _bindings(target: ast.AST, value: ast.AST):
    """(name, value as text) for each name `target = value` binds; tuple targets pair up with tuple values."""
    if isinstance(target, ast.Name):
        yield target.id, repr(value.value) if isinstance(value, ast.Constant) else ast.dump(value)
    elif isinstance(target, (ast.Tuple, ast.List)):
        paired = isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts)
        for i, t in enumerate(target.elts):
            if paired:
                yield from _bindings(t, value.elts[i])
            else:
                for name, _ in _bindings(t, value):
                    yield name, f"{ast.dump(value)}[{i}]"
    elif isinstance(target, ast.Starred):
        yield from ((name, f"*{v}") for name, v in _bindings(target.value, value))


def _is_stdlib(root: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10
    if names is not None:
        return root in names
    if root in sys.builtin_module_names:
        return True
    try:
        spec = importlib.util.find_spec(root)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    stdlib = sysconfig.get_paths()["stdlib"]
    return spec.origin.startswith(stdlib) and "site-packages" not in spec.origin and "dist-packages" not in spec.origin


def check_imports(parsed: Parsed) -> Check:
    """`fail` for anything outside the standard library and torch: DESIGN.md lists "the model/kernel code
    uses nothing outside PyTorch" among the user's constraints that are never traded away, so a Triton,
    NumPy or CuPy import is a broken requirement, not information (a `warn` would let `ok` stay true)."""
    name = "static_imports"
    if parsed.tree is None:
        return Check(name, "skip", f"not parsed ({parsed.syntax_error})")
    bad: List[str] = []
    for node in ast.walk(parsed.tree):
        mods: List[str] = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = ["." * node.level + (node.module or "")] if node.level else [node.module or ""]
        elif isinstance(node, ast.Call) and dotted(node.func) in ("importlib.import_module", "__import__") \
                and node.args and _const_str(node.args[0]) is not None:
            mods = [_const_str(node.args[0])]  # type: ignore[list-item]
        for mod in mods:
            root = mod.split(".")[0]
            if mod.startswith(".") or (root not in ALLOWED_ROOTS and not _is_stdlib(root)):
                item = f"{mod} (line {node.lineno})"
                if item not in bad:
                    bad.append(item)
    if bad:
        return Check(name, "fail", f"imports outside the standard library and torch: {', '.join(bad)} "
                                   "(the model code may use nothing outside PyTorch)")
    return Check(name, "pass", "imports only the standard library and torch")


def check_deprecated(parsed: Parsed) -> Check:
    name = "static_deprecated"
    if parsed.tree is None:
        return Check(name, "skip", f"not parsed ({parsed.syntax_error})")
    aliases = _aliases(parsed.tree)
    found: List[str] = []
    for node in ast.walk(parsed.tree):
        full = ""
        if isinstance(node, ast.Attribute):
            full = _resolve(dotted(node), aliases)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}" if any(f"{node.module}.{a.name}" == api for api in DEPRECATED_PY) else full
        for api, repl in DEPRECATED_PY.items():
            if full == api or full.startswith(api + "."):
                item = f"line {node.lineno}: {api} (use {repl})"
                if item not in found:
                    found.append(item)
    for line0, text in parsed.strings():
        if not _looks_like_cpp(text):
            continue
        for i, src_line in enumerate(text.split("\n")):
            code = src_line.split("//")[0]
            for pattern, what in DEPRECATED_CPP:
                if pattern.search(code):
                    found.append(f"line {line0 + i}: {what}")
    found.sort(key=lambda item: int(item.split(":")[0].split()[1]))
    if found:
        return Check(name, "fail", f"deprecated PyTorch API: {'; '.join(found[:6])}"
                                   + (f" (+{len(found) - 6} more)" if len(found) > 6 else ""))
    return Check(name, "pass", "no deprecated PyTorch API in the Python code or inline C++/CUDA sources")


def _looks_like_cpp(text: str) -> bool:
    return any(k in text for k in ("#include", "torch::", "at::", "__global__", "TORCH_CHECK", "AT_DISPATCH", ";\n"))


def check_fallback(parsed: Parsed) -> Check:
    """`warn`: a try/except whose body calls a custom kernel (or builds one) and whose handler carries on
    with torch ops hides a failing kernel behind the reference's own math."""
    name = "static_fallback"
    if parsed.tree is None:
        return Check(name, "skip", f"not parsed ({parsed.syntax_error})")
    aliases = _aliases(parsed.tree)
    kernels = _kernel_names(parsed.tree, aliases)
    wrappers = _kernel_wrappers(parsed.tree, kernels, aliases)
    hits = []
    for node in ast.walk(parsed.tree):
        if not isinstance(node, ast.Try) or not node.handlers:
            continue
        body_calls = [c for stmt in node.body for c in ast.walk(stmt) if isinstance(c, ast.Call)]
        if not any(_is_kernel_call(c, kernels, aliases) or _calls_one_of(c, wrappers) for c in body_calls):
            continue
        for handler in node.handlers:
            if all(isinstance(s, ast.Raise) for s in handler.body):
                continue  # re-raising is honest
            if any(isinstance(c, ast.Call) for s in handler.body for c in ast.walk(s)) or \
                    any(isinstance(s, (ast.Assign, ast.Pass, ast.Return)) for s in handler.body):
                hits.append(f"line {node.lineno}")
                break
    if hits:
        return Check(name, "warn", f"try/except around a custom kernel carries on without it ({', '.join(hits)}): "
                                   "a failing kernel would be hidden behind PyTorch ops; let it raise")
    return Check(name, "pass", "no try/except fallback around a custom kernel")


def _kernel_names(tree: ast.Module, aliases: Dict[str, str]) -> Set[str]:
    """Names bound to an inline extension (x = load_inline(...)) or a @triton.jit function."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            fn = _resolve(dotted(node.value.func), aliases)
            if fn.split(".")[-1] in KERNEL_BUILDERS and "cpp_extension" in fn:
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        names.add(t.id)
        elif isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                d = d.func if isinstance(d, ast.Call) else d
                if "triton" in _resolve(dotted(d), aliases):
                    names.add(node.name)
    return names


def _kernel_wrappers(tree: ast.Module, kernels: Set[str], aliases: Dict[str, str]) -> Set[str]:
    """Names of the functions and methods that call a custom kernel, directly or through one another
    (`self._fused(x)` whose body calls torch.ops...): a try around them hides the kernel just the same."""
    defs: Dict[str, List[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs.setdefault(node.name, []).append(node)
    wrappers: Set[str] = set()
    grew = True
    while grew:  # to a fixed point: wrappers of wrappers
        grew = False
        for fname, nodes in defs.items():
            if fname in wrappers:
                continue
            calls = [c for n in nodes for c in ast.walk(n) if isinstance(c, ast.Call)]
            if any(_is_kernel_call(c, kernels, aliases) or _calls_one_of(c, wrappers) for c in calls):
                wrappers.add(fname)
                grew = True
    return wrappers


def _calls_one_of(call: ast.Call, names: Set[str]) -> bool:
    """f(...) or self.f(...) / cls.f(...) with f in names."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in names
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id in ("self", "cls") and func.attr in names)


def _is_kernel_call(call: ast.Call, kernels: Set[str], aliases: Dict[str, str]) -> bool:
    func = call.func.value if isinstance(call.func, ast.Subscript) else call.func  # kernel[grid](...)
    full = _resolve(dotted(func), aliases)
    root = dotted(func).split(".")[0]
    return (root in kernels or full.startswith("torch.ops.")
            or (full.split(".")[-1] in KERNEL_BUILDERS and "cpp_extension" in full))


def static_checks(parsed: Parsed) -> List[Check]:
    return [check_inputs_unchanged(parsed), check_imports(parsed), check_deprecated(parsed), check_fallback(parsed),
            check_tampering(parsed)]


# --------------------------------------------------------------------------------- compiler errors
def map_compiler_errors(errors: List[str], sources: Dict[str, str], build_dir: str, parsed: Parsed) -> List[str]:
    """'…/cuda.cu:14: msg' -> 'candidate line 52 (cuda.cu:14): msg' where the inline source string that
    load_inline wrote into that generated file is a string constant of the candidate file (`parsed` carries
    the line offset of a markdown answer's code block)."""
    out = []
    consts = parsed.strings()
    for err in errors:
        m = re.match(r"^(?P<file>.+?):(?P<line>\d+): (?P<msg>.*)$", err)
        if not m:
            out.append(err)
            continue
        fname, line, msg = m.group("file"), int(m.group("line")), m.group("msg")
        mapped = _map_line(Path(build_dir) / Path(fname).name if build_dir else Path(fname), line, consts)
        short = f"{Path(fname).name}:{line}"
        out.append(f"candidate line {mapped} ({short}): {msg}" if mapped else f"{short}: {msg}")
    return out


def _map_line(generated: Path, line: int, consts: List[Tuple[int, str]]) -> Optional[int]:
    try:
        text = generated.read_text(errors="replace")
    except OSError:
        return None
    for first_line, value in consts:
        pos = text.find(value)
        if pos < 0:
            continue
        start = text.count("\n", 0, pos) + 1  # 1-based line of the constant's first character
        end = start + value.count("\n")
        if start <= line <= end:
            return first_line + (line - start)
    return None
