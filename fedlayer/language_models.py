"""The built-in language models: LEAF's character LSTM and a GPT-2-like decoder (nanoGPT's shape).

Both read a window of T token ids (N, T) and return next-token logits at every position
(N, T, vocabulary), the language task of `fedlayer.task_kinds`; `fedlayer.models` registers them as
"lstm" and "gpt", with their options and defaults. They draw their initial weights from torch's
global generator only (seed torch first), and nothing in a forward pass branches on the data, so
torch.fx traces them for the barrier engine's fast path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: embedding, stacked LSTM layers, a linear map to the vocabulary at every position.

    Caldas et al., "LEAF: A Benchmark for Federated Settings" (arXiv:1812.01097): an 8-dimensional
    character embedding, two LSTM layers of 256 units, and a dense layer to the vocabulary. LEAF
    predicts the character after the window only; here the dense layer reads every position, so every
    next character of the window is a prediction (labels (N, T)).

    Each LSTM layer is its own module, `lstm.0`, `lstm.1`, ..., as each of LEAF's two cells owns its
    kernel and bias: so each is one layer to average or interpolate (a single two-layer `nn.LSTM`
    would make both one layer). The function is that of `nn.LSTM(num_layers=2)`.

    Layers: embedding, lstm.0 .. lstm.{num_layers - 1}, fc.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        sizes = [embedding_dim] + [hidden_size] * num_layers
        self.lstm = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(num_layers))
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for lstm in self.lstm:
            x = lstm(x)[0]  # the outputs at every position; the final states are not needed
        return self.fc(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: c_attn makes queries, keys and values, c_proj mixes the heads."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, T, 3 C) -> 3 x (N, heads, T, C / heads): the layout of nanoGPT's split and view
        q, k, v = self.c_attn(x).unflatten(-1, (3, self.n_head, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(2)))


class MLP(nn.Module):
    """The block's feed-forward part: c_fc to 4 x n_embd, GELU, c_proj back."""

    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Decoder(nn.Module):
    """nanoGPT's `transformer`: token (wte) and position (wpe) embeddings, dropout, the blocks (h), ln_f."""

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float, bias: bool
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.size(1), device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT(nn.Module):
    """A GPT-2-like decoder with nanoGPT's module names, as the paper's language-model pair (E5) used.

    Token (wte) and learned position (wpe) embeddings, `n_layer` pre-LayerNorm blocks of causal
    self-attention and MLP, a final LayerNorm (ln_f), and lm_head, whose weight IS wte's (weight
    tying, Press and Wolf 2017, arXiv:1608.05859): the two names are one tensor, so they form one
    layer and are interpolated as one. Radford et al. 2019 (GPT-2); Karpathy's nanoGPT; the paper's
    E5 model came from Pagliardini's llm-baselines, which has the same structure and names, so its
    checkpoints' keys are these. Initialisation as nanoGPT: N(0, 0.02) weights, zero biases, and
    N(0, 0.02 / sqrt(2 n_layer)) for each residual projection (c_proj).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        bias: bool,
    ):
        super().__init__()
        self.transformer = Decoder(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif parameter.dim() >= 2:
                nn.init.normal_(parameter, 0.0, 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(parameter)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.transformer(tokens))
