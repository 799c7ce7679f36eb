"""The built-in `vit`: the SimpleViT the paper's transformer experiment (E4) used, sized by options.

Beyer, Zhai and Kolesnikov, "Better plain ViT baselines for ImageNet-1k" (arXiv:2205.01580), as
lucidrains' vit-pytorch `SimpleViT`: patches embedded by LayerNorm, Linear, LayerNorm; a fixed 2-D
sin-cos position embedding (not a parameter); pre-LayerNorm blocks of softmax attention (bias-free
projections) and a GELU MLP, each added to the residual stream; a final LayerNorm, the mean over
patches, and a Linear head. Module names are spelled out (vit-pytorch nests them in numbered
Sequentials) so that the layer table reads as the architecture: patch_norm, patch_embedding,
embedding_norm, blocks.i.attn.{norm, to_qkv, to_out}, blocks.i.mlp.{norm, fc1, fc2}, norm, head.
`fedlayer.models` registers it as "vit", with its options and defaults. Nothing branches on the data,
so torch.fx traces it for the barrier engine's fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SINCOS_TEMPERATURE = 10_000.0  # vit-pytorch's posemb_sincos_2d


def sincos_position_embedding(rows: int, columns: int, dim: int) -> torch.Tensor:
    """vit-pytorch's `posemb_sincos_2d`: (rows x columns, dim) of sin and cos of x and of y at geometric frequencies."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    omega = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(dim // 4) / (dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class Attention(nn.Module):
    """Pre-LayerNorm multi-head softmax attention with bias-free projections (to_qkv, to_out)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, patches, 3 heads dim_head) -> 3 x (N, heads, patches, dim_head): vit-pytorch's chunk and rearrange
        q, k, v = self.to_qkv(self.norm(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Pre-LayerNorm MLP: norm, fc1 to mlp_dim, GELU, fc2 back."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gelu(self.fc1(self.norm(x))))


class Block(nn.Module):
    """x + attn(x), then x + mlp(x): each part normalises its own input."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SimpleViT(nn.Module):
    """SimpleViT for (channels, height, width) images cut into patch_size x patch_size patches (see the module doc)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        patch_size: int,
    ):
        super().__init__()
        channels, height, width = input_shape
        self.grid = (height // patch_size, width // patch_size)
        self.patch_size = patch_size
        patch_dim = channels * patch_size * patch_size
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.patch_embedding = nn.Linear(patch_dim, dim)
        self.embedding_norm = nn.LayerNorm(dim)
        # A constant, not state: it is rebuilt with the model and never averaged or saved.
        self.register_buffer("position_embedding", sincos_position_embedding(*self.grid, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows, columns = self.grid
        p = self.patch_size
        # (N, C, rows p, columns p) -> (N, rows columns, p p C): vit-pytorch's 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        patches = images.unflatten(2, (rows, p)).unflatten(4, (columns, p)).permute(0, 2, 4, 3, 5, 1)
        x = self.embedding_norm(self.patch_embedding(self.patch_norm(patches.flatten(3).flatten(1, 2))))
        x = x + self.position_embedding
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
