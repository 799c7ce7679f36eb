"""Windows of Pythia tokens of a local text, the data of simulations/paper_scale/paper_pythia.toml.

A fedlayer dataset callable (docs/models-and-data.md, "Your own data"): it reads the text files in
`data.data_dir` (WikiText-103's validation split, `wiki.valid.tokens`, for the paper's setting), tokenises
them with Pythia's tokenizer from the local Hugging Face cache (never downloaded) and cuts the tokens into
windows of `SEQ_LEN`, each labelled with the next token at every position. Both the train and the test set
are these windows: the experiment trains nothing and measures on the test set.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEQ_LEN = 256  # the paper's window
TOKENIZER = "EleutherAI/pythia-410m"  # every Pythia model shares it
SUFFIXES = (".tokens", ".txt")


def token_windows(ids: torch.Tensor, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the non-overlapping windows of `ids`: (n, seq_len) each, labels shifted by one."""
    count = (len(ids) - 1) // seq_len
    if count < 1:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len} and its next token")
    used = ids[: count * seq_len + 1]
    return used[:-1].reshape(count, seq_len).clone(), used[1:].reshape(count, seq_len).clone()


def wikitext(data_dir: Path | None) -> dict:
    """The text files of `data_dir` as windows of Pythia tokens (`num_classes`: Pythia's vocabulary)."""
    from transformers import AutoConfig, AutoTokenizer

    if data_dir is None or not data_dir.is_dir():
        raise ValueError(
            f"set data.data_dir to a folder with the text to measure on (WikiText-103's wiki.valid.tokens for "
            f"the paper's setting), not {data_dir}"
        )
    files = sorted(p for p in data_dir.iterdir() if p.suffix in SUFFIXES)
    if not files:
        raise ValueError(f"{data_dir} holds no text file ({', '.join(SUFFIXES)})")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    text = "\n".join(p.read_text(encoding="utf-8") for p in files)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.int64)
    x, y = token_windows(ids)
    vocabulary = AutoConfig.from_pretrained(TOKENIZER, local_files_only=True).vocab_size  # 50,304: padded
    return {"num_classes": vocabulary, "train_x": x, "train_y": y, "test_x": x, "test_y": y}
