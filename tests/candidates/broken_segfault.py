# expect: fail=forward,backward,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs,anti_cheat_streams,output_contract,autocast,compile,inference_mode,serialization
# expect-cuda: fail=forward,backward,state_dict,gradcheck,training,autograd,shapes,init,anti_cheat_stale_output,anti_cheat_streams,anti_cheat_determinism,bad_inputs,output_contract,autocast,compile,inference_mode,serialization
"""Broken: dereferences NULL in forward (a segfault, as a bad kernel pointer would).

On the H100 (KernelBench size, expect-cuda) init and anti_cheat_streams also end as "error: not run: the
candidate process failed 2 times": they need the worker after the two failures the harness allows."""
import ctypes

import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        print("about to read address 0")
        ctypes.string_at(0)
        return x
