"""Linear layers with weights prepacked for oneDNN: the same float32 products, faster on CPU.

A decoding step multiplies a few rows by every weight matrix once. `torch.nn.Linear`
hands that to MKL's sgemm, which on this project's CPUs runs small-batch products at a
fraction of the memory bandwidth (SmolLM2's 210 projections plus its output layer take
67 ms for 10 rows, where reading the weights once takes 16 ms). oneDNN's inner product
with the weights reordered once into its blocked layout does the same float32 products
in 26 ms (`benchmarks/fastgen.py`, docs/benchmarks.md).

The products are float32 with float32 accumulation, like MKL's; only the order of the
additions differs, so results differ in the last bits (about 1e-6 relative), the size of
the differences MKL itself shows between a product of 1 row and of 64. Greedy outputs
were the same as `generate`'s on 100 of 100 SmolLM2 prompts.

`pack_linears(model)` swaps every `nn.Linear` of an inference model for a `PackedLinear`;
it is for generation only, after any adapter has been merged: packed weights have no
gradients and cannot be copied or saved, so a packed model must never be trained,
merged or exported (the engine's loaded models are used for generation alone). A tied
output layer gets its own packed copy beside the embedding (113 MB for SmolLM2).

Memory: the packed weights are the process's own memory, where the float32 weights were
pages of the memory-mapped safetensors file. A loaded SmolLM2 takes about 1.0 GB of
resident memory in all instead of 0.5 GB.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# oneDNN picks the weights' blocked layout for an expected batch; 64 rows (the engine's
# batch then; it now takes up to 128) was as fast as 1 at 1 to 10 rows and the fastest at
# 64 (measured on 2 cores).
LAYOUT_BATCH = 64


def available() -> bool:
    """Whether this torch build has the oneDNN ops that `PackedLinear` uses."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) reordered once into oneDNN's blocked layout, for `product`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, LAYOUT_BATCH)


def product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b with W `pack`ed: oneDNN's inner product, no copy of W."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """`y = x Wᵀ + b` with W held in oneDNN's layout (CPU, inference only).

    With `dtype` bfloat16, W is held in bfloat16 and each product takes its input in
    bfloat16 and gives its output back in the input's dtype (float32 around it): half the
    bytes to read per step, and the CPU's bfloat16 units, at bfloat16's precision.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.dtype = dtype
        weight = linear.weight.detach().to(dtype)
        self.packed = pack(weight)
        bias = linear.bias
        self.bias = None if bias is None else bias.detach().to(dtype).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `.to` of a tensor already in that dtype is the tensor itself: no copy in float32
        return product(x.to(self.dtype), self.packed, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def bf16_supported() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN's own test)."""
    return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears(model: Any, dtype: torch.dtype = torch.float32) -> int:
    """Swap the float32 CPU `nn.Linear`s of `model` for `PackedLinear`s; how many.

    Does nothing (returns 0) where oneDNN is missing. Layers on other devices or in
    other dtypes are left as they are. `dtype` bfloat16 holds the weights in bfloat16
    (see `PackedLinear`); ask `bf16_supported()` first.
    """
    if not available():
        return 0
    # (parent, name) only: holding the layers themselves would keep every float32 weight
    # alive until the last one is packed, twice the model's memory at the peak
    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.device.type == "cpu"
        and child.weight.dtype == torch.float32
    ]
    with torch.inference_mode():
        for parent, name in swaps:
            setattr(parent, name, PackedLinear(getattr(parent, name), dtype))
    if swaps:
        # The tensors left (embedding, norms) may be views of the memory-mapped weights
        # file, which would then stay mapped whole beside the packed copy: own them.
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.data = tensor.data.clone()
    return len(swaps)
