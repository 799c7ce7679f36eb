"""An offline stand-in for the Pythia pair of simulations/paper_scale/paper_pythia.toml: two tiny GPT-NeoX
models (Pythia's architecture) from different seeds, saved as Hugging Face folders, and a dataset callable
giving windows of Shakespeare's characters in the shape of the config's Pythia token windows."""

from __future__ import annotations

from pathlib import Path

import torch

from fedlayer.data.shakespeare import VOCABULARY, corpus_text, encode, read_plays, windows

SEQ_LEN = 32
CHARACTERS = 20_000


def write_pair(folder: Path) -> list[Path]:
    """Two tiny GPT-NeoX folders (save_pretrained) over Shakespeare's characters, seeds 0 and 1."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(VOCABULARY),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ_LEN,
    )
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(folder / f"neox-{seed}")
        GPTNeoXForCausalLM(config).save_pretrained(paths[-1])
    return paths


def character_windows() -> dict:
    """A dataset callable: the first characters of the plays as (inputs, next characters) windows."""
    rows = windows(encode(corpus_text(read_plays())[:CHARACTERS]), SEQ_LEN, SEQ_LEN)
    x, y = rows[:, :-1].clone(), rows[:, 1:].clone()
    return {"num_classes": len(VOCABULARY), "train_x": x, "train_y": y, "test_x": x, "test_y": y}
