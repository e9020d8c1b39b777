"""The candidate's side of the trust boundary: `python -m mishbench.candidate.worker`.

Started by process.py in a temporary working directory with a scrubbed environment. It imports the
candidate file (building any inline extension), then serves requests until its stdin closes (protocol.py).
It imports torch, the protocol, the clock, the environment probe and the output observer, nothing else of
mishbench: everything it could reach, the candidate can rewrite.

Nothing here is trusted by the harness for correctness: reference outputs and gradients are computed in the
harness. What the worker reports beyond outputs (input mutation, aliasing, backend flags, timings) feeds the
anti-cheat checks, which catch the usual accidental and deliberate shortcuts, not a candidate that attacks
this file on purpose.
"""
import gc
import importlib.util
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import torch

from mishbench import clock
from mishbench.candidate import environment
from mishbench.candidate.observe import (Outputs, equal_nan, module_tensors, overlap, plain_tensor, poison,
                                        wrap_extension_builders)
from mishbench.candidate.protocol import (CANDIDATE_FILE, DTYPES, HEADER, MAX_MESSAGE, compat_calls, decode, encode,
                                         grad_mode_calls, read_exact, train_calls)



# -------------------------------------------------------------------------------------- helpers
def _cpu(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A compact CPU copy: torch.save of a view would ship its whole storage."""
    if t is None:
        return None
    return plain_tensor(t).detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # device-wide: work a candidate left on side streams is finished too


# ------------------------------------------------------------------------------------------- worker
class Worker:
    def __init__(self):
        self.module = None
        self.model_cls = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.builds: List[Dict[str, Any]] = []
        self.env0: Dict[str, str] = {}
        self.flag_changes: List[str] = []
        self.warnings = environment.Warnings()
        self.outputs = Outputs()
        self.ref_layout: List[Tuple[str, List[str]]] = []
        self.models: Dict[Any, Tuple[torch.nn.Module, Optional[Dict[str, str]]]] = {}
        self.states: Dict[Any, Dict[str, torch.Tensor]] = {}
        self.last_output: Optional[torch.Tensor] = None
        self.batch: Dict[str, Any] = {}

    # -- environment ----------------------------------------------------------------------------------
    def _note_flags(self, stage: str) -> None:
        for line in environment.changes(self.env0, environment.snapshot(self.device)):
            name = line.split(":", 1)[0]
            if not any(c.startswith(name + ":") for c in self.flag_changes):
                self.flag_changes.append(f"{line} ({stage})")

    def env_reply(self) -> Dict[str, Any]:
        return {"flag_changes": list(self.flag_changes), "warnings": list(self.warnings.records)}

    # -- load ---------------------------------------------------------------------------------------
    def op_load(self, req):
        self.device = torch.device(req["device"])
        self.dtype = DTYPES[req["dtype"]]
        self.ref_layout = [(str(n), [str(d) for d in dims]) for n, dims in req.get("ref_layout") or []]
        self.env0 = environment.snapshot(self.device)
        wrap_extension_builders(self.builds)
        t0 = time.perf_counter()
        error = ""
        try:
            spec = importlib.util.spec_from_file_location("candidate", os.path.abspath(CANDIDATE_FILE))
            module = importlib.util.module_from_spec(spec)
            sys.modules["candidate"] = module
            with self.warnings.capture("import"):
                spec.loader.exec_module(module)
            self.module = module
            self.model_cls = getattr(module, "ModelNew", None)
            if self.model_cls is None:
                error = "the file defines no ModelNew"
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a candidate is a finding too
            error = f"{type(exc).__name__}: {exc}"
            tb = traceback.extract_tb(exc.__traceback__)
            frames = [f for f in tb if f.filename.endswith(CANDIDATE_FILE)]
            if frames:
                error = f"line {frames[-1].lineno}: {error}"
            if isinstance(exc, SyntaxError) and exc.lineno:
                error = f"line {exc.lineno}: SyntaxError: {exc.msg}"
        self._note_flags("import")
        reply = {"ok": not error, "load_error": error, "seconds": time.perf_counter() - t0, "builds": self.builds}
        reply.update(self.env_reply())
        return reply

    # -- models -------------------------------------------------------------------------------------
    def _construct(self, size) -> torch.nn.Module:
        with self.warnings.capture("construction"):
            model = self.model_cls(int(size[1]), int(size[2]))
        self._note_flags("construct")
        return model

    def _name_map(self, model: torch.nn.Module, size) -> Optional[Dict[str, str]]:
        """Model's parameter name -> the candidate's, where the names differ but the entries pair up one to
        one by shape in creation order (`weight`/`bias` at the top, `fused.weight`): the numbers are then
        judged as KernelBench's seeded construction would pair them. None: the same names, or no pairing
        (an extra or a reshaped parameter), and the state is loaded by name as it is."""
        dims = {"in": int(size[1]), "out": int(size[2])}
        ref = [(name, tuple(dims.get(d, 0) for d in shape)) for name, shape in self.ref_layout]
        mine = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        if not ref or len(ref) != len(mine) or {k for k, _ in ref} == {k for k, _ in mine}:
            return None
        used, out = set(), {}
        for name, shape in ref:
            pick = next((k for k, s in mine if s == shape and k not in used), None)
            if pick is None:
                return None
            used.add(pick)
            out[name] = pick
        return out

    def _model(self, size, device, dtype, req) -> Tuple[torch.nn.Module, Optional[Dict[str, str]]]:
        key = (tuple(size), str(device), str(dtype))
        entry = self.models.get(key)
        if entry is None:
            model = self._construct(size).to(device, dtype)
            entry = (model, self._name_map(model, size))
            self.models = {key: entry}  # one at a time: KernelBench-size modules are 256 MB each
        model, names = entry
        state = req.get("state")
        skey = req.get("state_key")
        if state is not None:
            state = {(names or {}).get(k, k): v.to(device, dtype) for k, v in state.items()}
            self.states = {skey: state} if skey is not None else {}
        else:
            state = self.states[skey]
        model.load_state_dict(state, strict=True)
        model.zero_grad(set_to_none=True)
        return model, names

    def op_init_state(self, req):
        """The state right after construction under the harness's construction seed (never the seed the
        inputs are drawn from), keyed by Model's names where they pair up (`names`: Model's -> the
        candidate's)."""
        torch.manual_seed(int(req["seed"]))
        model = self._construct(req["size"])
        names = self._name_map(model, req["size"])
        back = {v: k for k, v in (names or {}).items()}
        return {"state": {back.get(k, k): _cpu(v) for k, v in model.state_dict().items()}, "names": names or {}}

    def _observe(self, model, x_in, x_sent, params_before, y, observations) -> Optional[str]:
        """Input and parameters unchanged, output memory not shared; returns what the output shares."""
        if not equal_nan(x_in.detach(), x_sent):
            n = int((x_in.detach() != x_sent).sum())
            observations.append(f"mutation: forward modified its input x in place ({n} elements changed)")
        for name, before in params_before.items():
            after = dict(model.state_dict()).get(name)
            if after is not None and not equal_nan(after.detach(), before):
                observations.append(f"mutation: forward modified parameter {name} in place")
        targets = [("input x", x_in)] + module_tensors(model)
        if self.last_output is not None:
            targets.append(("the previous call's output", self.last_output))
        shared = None
        for name, t in targets:
            try:
                hit = t is y or overlap(y, t)
            except Exception:  # noqa: BLE001 - an output without storage (its type is the finding)
                hit = False
            if hit:
                observations.append(f"aliasing: output shares memory with {name}")
                shared = name
                break
        self.last_output = y.detach()
        return shared

    def _call(self, model, names, x, grad_y, size, observations):
        """One candidate call on x; returns y and grads by Model's names. Inputs and parameters are compared
        after it; warnings it raises are recorded."""
        x_sent = x.detach().clone()
        params_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out_numel = int(x.numel() // max(int(size[1]), 1)) * int(size[2]) if x.dim() else int(size[2])
        poison(out_numel, self.device, x.dtype)
        grads = None
        with self.warnings.capture("call"):
            if grad_y is None:
                x_in = x
                with torch.no_grad():
                    y = model(x_in)
            else:
                x_in = x.detach().clone().requires_grad_()
                y = model(x_in)
                if isinstance(y, torch.Tensor) and y.requires_grad:
                    y.backward(grad_y)
        if not isinstance(y, torch.Tensor):
            self.outputs.check(y, x_in, size, None)
            raise TypeError(f"ModelNew.forward returned {type(y).__name__}, not a Tensor")
        if grad_y is not None:
            if not y.requires_grad:
                raise RuntimeError("ModelNew's output does not require grad: no backward (autograd graph cut)")
            back = {v: k for k, v in (names or {}).items()}
            grads = {"x": x_in.grad}
            grads.update({back.get(n, n): p.grad for n, p in model.named_parameters()})
        _sync(self.device)
        shared = self._observe(model, x_in, x_sent, params_before, y, observations)
        self.outputs.check(y, x_in, size, shared)
        self._note_flags("forward")
        return y, grads

    def op_run(self, req):
        x = req["x"].to(self.device)
        model, names = self._model(req["size"], self.device, x.dtype, req)
        grad_y = req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None
        obs: List[str] = []
        y, grads = self._call(model, names, x, grad_y, req["size"], obs)
        reply = {"y": _cpu(y), "grads": {k: _cpu(v) for k, v in grads.items()} if grads is not None else None,
                 "observations": obs}
        reply.update(self.env_reply())
        return reply

    def op_run_seq(self, req):
        """Several inputs through ONE reused input buffer (same object, same address, new contents): an
        output cached by input identity, address or shape comes back stale. With `keep`, every output is
        held until the last call returns and only then copied: outputs that share a ring of buffers come
        back overwritten, which the harness sees in their values."""
        xs = [x.to(self.device) for x in req["xs"]]
        model, names = self._model(req["size"], self.device, xs[0].dtype, req)
        buf = torch.empty_like(xs[0])
        ys, held, obs = [], [], []
        for x in xs:
            with torch.no_grad():
                buf.copy_(x)
            y, _ = self._call(model, names, buf, None, req["size"], obs)
            if req.get("keep"):
                held.append(y)
            else:
                ys.append(_cpu(y))
        ys += [_cpu(y) for y in held]
        reply = {"ys": ys, "observations": obs}
        reply.update(self.env_reply())
        return reply

    def op_contract(self, req):
        return self.outputs.reply()

    def op_call_error(self, req):
        size = req["size"]
        model = self._construct(size).to(torch.device(req["param_device"]), DTYPES[req["param_dtype"]])
        x = req["x"].to(torch.device(req["x_device"]))
        try:
            with torch.no_grad():
                model(x)
            _sync(self.device)
        except Exception as exc:  # noqa: BLE001
            return {"error": None, "raised": f"{type(exc).__name__}: {exc}"}
        return {"error": None, "raised": None}

    def op_batch_setup(self, req):
        """The model, inputs (rotated) and upstream gradient of the batches that follow."""
        xs = [x.to(self.device) for x in req["xs"]]
        model, _ = self._model(req["size"], self.device, xs[0].dtype, req)
        grad_y = req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None

        def call(xx):
            if grad_y is None:
                with torch.no_grad():
                    return model(xx)
            model.zero_grad(set_to_none=True)
            xx = xx.detach().requires_grad_()
            y = model(xx)
            y.backward(grad_y)
            return y

        self.batch = {"call": call, "xs": xs, "size": req["size"], "kept": [], "sent": [x.clone() for x in xs]}
        return {}

    def op_batch(self, req):
        """n calls, a device-wide synchronize, the reply: the harness times this request from outside.
        Every output is kept until the next batch, for the harness to name the ones it checks afterwards.
        The times here are this process's own (its clocks can be rewritten): a second opinion."""
        b = self.batch
        b["kept"] = []  # free the last batch's outputs first
        with self.warnings.capture("call"):
            host_ms, event_ms, b["kept"] = clock.run_batch(b["call"], b["xs"], int(req["n"]), self.device, keep=True)
        return {"host_ms": host_ms, "event_ms": event_ms, "n": int(req["n"])}

    def op_batch_outputs(self, req):
        """Outputs of the last batch by call index (chosen by the harness after the batch); each is checked
        against the output contract as the other calls' are."""
        b, out = self.batch, []
        for i in req["indices"]:
            y = b["kept"][int(i)]
            self.outputs.check(y, b["xs"][int(i) % len(b["xs"])], b["size"], None)
            out.append(_cpu(y))
        self._note_flags("timed calls")
        # Inputs changed by the timed calls: their outputs cannot be judged against the inputs sent, and
        # the change is anti_cheat_input_mutation's finding.
        changed = not all(equal_nan(x, x0) for x, x0 in zip(b["xs"], b["sent"]))
        reply = {"ys": out, "inputs_changed": changed, "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20
                 if self.device.type == "cuda" else None}
        if changed:
            reply["observations"] = ["mutation: forward modified its input x in place (during timed calls)"]
        reply.update(self.env_reply())
        return reply

    def op_ping(self, req):
        return {}

    def op_release(self, req):
        """Between bench cases this process idles while the harness times its baselines on the same GPU:
        drop the model, states and last output, hand cached device memory back, and start a new peak-memory
        count, so the next case's peak_mem_mb is that case's own."""
        self.models, self.states, self.last_output, self.batch = {}, {}, None, {}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self.env_reply()

    def op_train(self, req):  # protocol.train_calls; the harness judges the losses and the final state
        xs, targets = [x.to(self.device) for x in req["xs"]], [t.to(self.device) for t in req["targets"]]
        model, names = self._model(req["size"], self.device, xs[0].dtype, req)
        losses = train_calls(model, xs, targets, int(req["steps"]), float(req["lr"]), float(req["momentum"]))
        self._note_flags("training")
        back = {v: k for k, v in (names or {}).items()}  # the candidate's names -> Model's
        return {"losses": losses, "state": {back.get(k, k): _cpu(v) for k, v in model.state_dict().items()},
                "flag_changes": list(self.flag_changes)}

    def op_grad_mode(self, req):  # protocol.grad_mode_calls; grad_y goes back as the candidate left it
        x, grad_y = req["x"].to(self.device), req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None
        model, names = self._model(req["size"], self.device, x.dtype, req)
        y, grads, facts = grad_mode_calls(model, str(req["mode"]), x, grad_y)
        self._note_flags("backward")
        back = {v: k for k, v in (names or {}).items()}
        grads = {back.get(k, k): v for k, v in grads.items()}
        return {"y": _cpu(y), "grads": {k: _cpu(v) for k, v in grads.items()}, "upstream_after": _cpu(grad_y),
                "grad_written": list(facts.get("grad_written") or []), "flag_changes": list(self.flag_changes)}

    def op_compat(self, req):
        """protocol.compat_calls on the candidate. Serialization's second module is constructed under the
        seed the harness names; both modules' outputs and the saved module's state go back, so the harness
        compares them itself (the facts computed here are the candidate's own account)."""
        x, grad_y = req["x"].to(self.device), req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None
        model, names = self._model(req["size"], self.device, x.dtype, req)

        def fresh():
            torch.manual_seed(int(req["fresh_seed"]))
            return self._construct(req["size"]).to(self.device, x.dtype)

        with self.warnings.capture("call"):
            y, grads, facts = compat_calls(model, str(req["mode"]), x, grad_y, fresh, str(req["backend"]))
        _sync(self.device)
        self._note_flags(str(req["mode"]))
        back = {v: k for k, v in (names or {}).items()}  # the candidate's names -> Model's
        reply = {"y": _cpu(y), "grads": None if grads is None else {back.get(k, k): _cpu(v) for k, v in grads.items()},
                 "facts": {k: v for k, v in facts.items() if v is None or isinstance(v, (bool, int, float, str))},
                 "y_before": _cpu(facts.get("y_before"))}
        if req["mode"] == "serialization":  # the saved module's state, for the harness to compare
            reply["state"] = {back.get(k, k): _cpu(v) for k, v in model.state_dict().items()}
        reply.update(self.env_reply())
        return reply

    def op_flags(self, req):
        self._note_flags("request")
        return self.env_reply()

    def handle(self, req):
        op = req.get("op")
        fn = getattr(self, "op_" + str(op), None)
        if fn is None:
            return {"error": f"unknown op {op!r}"}
        if op != "load" and self.model_cls is None:
            return {"error": "the candidate did not load"}
        return fn(req)


def _format_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(CANDIDATE_FILE)]
    if frames:
        text = f"candidate line {frames[-1].lineno}: {text}"
    return text[:600]


def main() -> int:
    # The protocol owns private copies of fds 0/1; the candidate's prints go to stderr (the harness's log
    # file) so they cannot corrupt a reply.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    for stream in (sys.stdout, sys.stderr):  # a crash must not swallow what the candidate printed last
        try:
            stream.reconfigure(line_buffering=True)
        except AttributeError:
            pass
    worker = Worker()
    while True:
        head = read_exact(proto_in, HEADER.size)
        if head is None:
            return 0
        (n,) = HEADER.unpack(head)
        if n > MAX_MESSAGE:
            return 3
        data = read_exact(proto_in, n)
        if data is None:
            return 0
        req = decode(data)
        try:
            reply = worker.handle(req)
        except BaseException as exc:  # noqa: BLE001 - a failing candidate is a finding; keep serving
            reply = {"error": _format_error(exc)}
            sys.stderr.write(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            payload = encode(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. a tensor subclass that will not pickle
            payload = encode({"error": f"reply not serialisable: {type(exc).__name__}: {exc}"})
        proto_out.write(payload)


if __name__ == "__main__":
    sys.exit(main())
