"""Max pooling for the barrier engine's working copy on CPUs: the same numbers, several times faster.

PyTorch's CPU kernel for max pooling over contiguous (N, C, H, W) tensors is slow: at the demo's
settings it took a third of the per-round analysis. Without padding, a max pool is the elementwise
maximum of its k*k strided views of the input, which vectorised `torch.maximum` computes quickly.
The maximum of the same elements is the same float whatever the order, so the result is bit for
bit that of `nn.MaxPool2d` (NaNs propagate in both). Padded, ceil-mode and index-returning pools,
and any other layout or device, run the stock kernel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair


class StridedMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` computed as a maximum of strided views where that is exact and faster."""

    @classmethod
    def replacing(cls, pool: nn.MaxPool2d) -> StridedMaxPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode)

    def forward(self, x: torch.Tensor):
        if not self._strided(x):
            return super().forward(x)
        (kh, kw), (sh, sw), (dh, dw) = _pair(self.kernel_size), _pair(self.stride), _pair(self.dilation)
        height, width = x.shape[-2:]
        out_h, out_w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
        result = None
        for i in range(kh):
            for j in range(kw):
                view = x[..., i * dh : i * dh + sh * (out_h - 1) + 1 : sh, j * dw : j * dw + sw * (out_w - 1) + 1 : sw]
                if result is None:
                    result = view.clone()
                else:
                    torch.maximum(result, view, out=result)
        return result

    def _strided(self, x: torch.Tensor) -> bool:
        (kh, kw), (dh, dw) = _pair(self.kernel_size), _pair(self.dilation)
        return (
            x.device.type == "cpu"
            and x.dim() in (3, 4)
            and x.is_contiguous()
            and x.is_floating_point()
            and not self.return_indices
            and not self.ceil_mode
            and _pair(self.padding) == (0, 0)
            and x.shape[-2] >= dh * (kh - 1) + 1
            and x.shape[-1] >= dw * (kw - 1) + 1
        )


def use_strided_max_pools(model: nn.Module) -> None:
    """Replace every plain `nn.MaxPool2d` in `model` (a private copy) by a `StridedMaxPool2d`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d:
                setattr(parent, name, StridedMaxPool2d.replacing(child))
