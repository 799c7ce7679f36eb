"""Every example of README.md and docs/*.md runs as written, so that a doc example cannot rot.

Each fenced block is one test, in document order:
- ```bash / ```sh / ```shell blocks, and the `$ ` lines of ```console blocks, are commands. `fedlayer ...`
  runs in this process through `fedlayer.cli.main` and must exit with 0; `export A=B` sets a variable
  for the block's later commands; anything else must be marked (below).
- ```python blocks run as a script in a fresh interpreter.
- ```toml blocks must parse; one that is an experiment config (its tables are config sections) runs
  with `fedlayer run`.

Commands and scripts run in a folder of their own per page, where `simulations/` is the checkout's;
a block that names a path an earlier block of its page writes (`--out PATH`) runs after that block.
Long work is made small without touching what a command means: rounds, clients, epochs, samples,
α points, seeds and benchmark sizes are capped (`capped_argv`; the barrier benchmark runs on the CNN,
since its naive side builds a model per point), and federated runs use an in-process
Flower grid instead of starting Ray (set FEDLAYER_DOC_ENGINE=ray to use Flower's simulation engine;
`test_readme_demo_command_on_flowers_simulation_engine` always does for the README's demo).

An HTML comment on the line before a block changes how it runs:
    <!-- doc-test: skip (why) -->   not run; the reason is required (several machines, installs, ...)
    <!-- doc-test: cuda -->         run only where CUDA is available
    <!-- doc-test: slow -->         marked slow (blocks that run a simulation are slow anyway)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_LANGS = {"bash", "sh", "shell", "console"}
RUN_LANGS = COMMAND_LANGS | {"python", "toml"}
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(?P<text>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
SIMULATING = {("run",), ("compare",), ("bench", "simulation"), ("bench", "memory")}
SCRIPT_TIMEOUT_S = 600

# Caps on the size of every experiment a doc command runs: (config key, largest value).
CAPS = {
    "federation.rounds": 1,
    "federation.clients": 3,
    "federation.local_epochs": 1,
    "federation.head_epochs": 1,
    "data.max_train_samples": 240,
    "data.max_test_samples": 120,
    "analysis.pairs": 1,
    "analysis.samples": 16,
    "analysis.alphas": 3,
    "analysis.random_directions": 1,
}
# Options capped the same way, per command: option -> largest value.
OPTION_CAPS = {
    ("compare",): {"--seeds": 1},
    ("barrier",): {"--samples": 64, "--random-directions": 1},
    ("bench", "barriers"): {"--samples": 8, "--alphas": 3},
    ("bench", "simulation"): {"--rounds": 1},
    ("bench", "memory"): {"--rounds": 1, "--warmup": 0},
}
LIGHT_MODELS = ("mlp", "cnn", "deep-linear")
OPTION_DEFAULTS = {  # what the command would use when the option is not given
    ("barrier",): {"--samples": 512},
    ("bench", "barriers"): {"--samples": 64, "--alphas": 5},
    ("bench", "simulation"): {"--rounds": 4},
    ("bench", "memory"): {"--rounds": 2, "--warmup": 1},
}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directive: str = ""
    after: list[Block] = field(default_factory=list)  # earlier blocks of the page this one uses

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if self.directive.startswith("skip"):
            return self.directive[len("skip") :].strip().strip("()").strip()
        if self.directive == "cuda" and not _cuda():
            return "needs a CUDA GPU"
        return None

    def commands(self) -> list[list[str]]:
        return shell_commands(self.code, prompt=self.lang == "console") if self.lang in COMMAND_LANGS else []

    def writes(self) -> list[str]:
        """Paths given to --out in this block's commands."""
        return [argv[i + 1] for argv in self.commands() for i, arg in enumerate(argv[:-1]) if arg == "--out"]

    @property
    def simulates(self) -> bool:
        if self.lang == "toml":
            return is_experiment_config(tomllib.loads(self.code))
        return any(tuple(argv[1:3]) in SIMULATING or tuple(argv[1:2]) in SIMULATING for argv in self.fedlayer())

    def fedlayer(self) -> list[list[str]]:
        return [argv for argv in self.commands() if argv and argv[0] == "fedlayer"]

    @property
    def slow(self) -> bool:
        return self.directive == "slow" or self.simulates or any(block.slow for block in self.after)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def page_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page that run (by language), with their directives and dependencies."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening["fence"], opening["lang"].lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence[0] * len(fence))), len(lines))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found = DIRECTIVE.match(before.strip())
        if lang in RUN_LANGS:
            blocks.append(
                Block(page, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", found["text"] if found else "")
            )
        i = end + 1
    for n, block in enumerate(blocks):
        block.after = [earlier for earlier in blocks[:n] if any(path in block.code for path in earlier.writes())]
    return blocks


def shell_commands(code: str, *, prompt: bool = False) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuations joined, comments dropped; in a
    console block only the lines after a `$ ` prompt."""
    text = code.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if prompt:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def is_experiment_config(data: dict) -> bool:
    from fedlayer.config import Config

    sections = {f.name.rstrip("_") for f in Config.__dataclass_fields__.values()}
    return bool(data) and set(data) <= sections


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


# -- making long work small --------------------------------------------------------------------------------
def capped_overrides(config: str | None, overrides: list[str]) -> list[str]:
    """`--set` arguments that cap the size of the experiment `config` + `overrides` (see CAPS)."""
    from fedlayer.config import load_config

    cfg = load_config(config, overrides)
    values = {key: _get(cfg, key) for key in CAPS}
    capped = {}
    for key, cap in CAPS.items():
        value = values[key]
        if key in ("data.max_train_samples", "data.max_test_samples", "analysis.pairs") and value == 0:
            value = cap + 1  # 0 means all
        if value > cap:
            capped[key] = cap
    clients = capped.get("federation.clients", values["federation.clients"])
    if cfg.federation.min_clients > clients:
        capped["federation.min_clients"] = clients
    rounds = capped.get("federation.rounds", cfg.federation.rounds)
    if cfg.analysis.every > rounds:
        capped["analysis.every"] = rounds  # still analyse, in the last round
    return [arg for key, value in capped.items() for arg in ("--set", f"{key}={value}")]


def _get(cfg, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section), name)


def capped_argv(argv: list[str]) -> list[str]:
    """A `fedlayer` command line (without `fedlayer`) with its experiment and options capped."""
    from fedlayer.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`fedlayer {shlex.join(argv)}` is not a valid command line (argparse's message is above)")
    command = (args.command, args.benchmark) if args.command == "bench" else (args.command,)
    extra: list[str] = []
    if getattr(args, "overrides", None) is not None and not getattr(args, "resume", None):
        if getattr(args, "config", None) or command[0] == "bench":
            extra += capped_overrides(args.config, args.overrides)
    if command == ("bench", "barriers") and args.model not in LIGHT_MODELS:
        extra += ["--model", "cnn"]  # the naive side builds a model per point: minutes for a ResNet18
    for option, cap in OPTION_CAPS.get(command, {}).items():
        given = getattr(args, option.lstrip("-").replace("-", "_"))
        value = OPTION_DEFAULTS.get(command, {}).get(option) if given is None else given
        if value is not None and value > cap:
            extra += [option, str(cap)]
    return argv + extra


# -- running blocks ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def page_dirs(tmp_path_factory) -> dict[Path, Path]:
    return {}


@pytest.fixture
def workdir(page_dirs, tmp_path_factory):
    def get(page: Path) -> Path:
        if page not in page_dirs:
            path = tmp_path_factory.mktemp(page.stem.lower())
            (path / "simulations").symlink_to(ROOT / "simulations")
            page_dirs[page] = path
        return page_dirs[page]

    return get


_RESULTS: dict[str, str | None] = {}  # block id -> None (passed) or why it failed


def run_block(block: Block, cwd: Path, monkeypatch) -> None:
    if block.lang == "python":
        run_python(block, cwd)
    elif block.lang == "toml":
        data = tomllib.loads(block.code)
        if is_experiment_config(data):
            path = cwd / f"config-{block.line}.toml"
            path.write_text(block.code)
            run_fedlayer(["run", str(path), "--out", f"runs/config-{block.line}"], monkeypatch)
    else:
        env: dict[str, str] = {}
        for argv in block.commands():
            if argv[0] == "export":
                for assignment in argv[1:]:
                    name, _, value = assignment.partition("=")
                    env[name] = value
                    monkeypatch.setenv(name, value)
            elif argv[0] == "fedlayer":
                run_fedlayer([os.path.expandvars(arg) for arg in argv[1:]], monkeypatch)
            else:
                pytest.fail(
                    f"{block.id} runs {argv[0]!r}, which these tests cannot run; mark the block "
                    "<!-- doc-test: skip (why) --> if it cannot run here"
                )


def run_fedlayer(argv: list[str], monkeypatch) -> None:
    import fedlayer.simulation
    from fedlayer.cli import main

    if os.environ.get("FEDLAYER_DOC_ENGINE", "in-process") != "ray":
        assert hasattr(fedlayer.simulation, "simulate"), (
            "fedlayer.simulation.simulate is the engine these tests replace"
        )
        from inprocess_grid import in_process_engine

        monkeypatch.setattr(fedlayer.simulation, "simulate", in_process_engine)
    capped = capped_argv(argv)
    code = main(capped)
    assert code == 0, f"`fedlayer {shlex.join(argv)}` exited with {code} (run as `fedlayer {shlex.join(capped)}`)"


def run_python(block: Block, cwd: Path) -> None:
    script = cwd / f"block-{block.line}.py"
    script.write_text(block.code)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(
        [sys.executable, script.name], cwd=cwd, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def ensure_ran(block: Block, workdir, monkeypatch) -> None:
    """Run the earlier blocks this one uses (once per session), then this one."""
    for earlier in block.after:
        if earlier.id not in _RESULTS:
            ensure_ran(earlier, workdir, monkeypatch)
        if _RESULTS[earlier.id] is not None:
            pytest.fail(f"{block.id} uses what {earlier.id} writes, and that block failed: {_RESULTS[earlier.id]}")
    monkeypatch.chdir(workdir(block.page))
    try:
        run_block(block, workdir(block.page), monkeypatch)
    except BaseException as exc:
        _RESULTS[block.id] = f"{type(exc).__name__}: {str(exc)[:500]}"
        raise
    _RESULTS[block.id] = None


def _params() -> Iterator:
    for block in BLOCKS:
        marks = [pytest.mark.slow] if block.slow else []
        yield pytest.param(block, id=block.id, marks=marks)


@pytest.fixture
def fashion_mnist():
    """Blocks read Fashion-MNIST as the docs' configs do; without it they cannot run as written."""
    from fedlayer.data import load_dataset
    from fedlayer.errors import FedlayerError

    try:
        load_dataset("fashion-mnist")
    except FedlayerError:
        pytest.skip("Fashion-MNIST is not installed (make data)")


@pytest.mark.parametrize("block", list(_params()))
def test_doc_block_runs(block: Block, workdir, monkeypatch, fashion_mnist):
    reason = block.skip_reason
    if reason is not None:
        pytest.skip(f"{block.id}: {reason}")
    for earlier in block.after:
        if earlier.skip_reason is not None:
            pytest.skip(f"{block.id} uses what {earlier.id} writes, which does not run here: {earlier.skip_reason}")
    with monkeypatch.context() as patch:
        ensure_ran(block, workdir, patch)


# -- the harness itself ------------------------------------------------------------------------------------
def test_every_page_has_examples_and_every_directive_is_known():
    assert {block.page for block in BLOCKS} >= {ROOT / "README.md"}
    for block in BLOCKS:
        assert block.directive in ("", "cuda", "slow") or block.directive.startswith("skip"), (
            f"{block.id}: unknown doc-test directive {block.directive!r}"
        )
        if block.directive.startswith("skip"):
            assert block.skip_reason, f"{block.id}: a skip needs a reason, e.g. <!-- doc-test: skip (why) -->"


def test_skips_are_few():
    skipped = [block.id for block in BLOCKS if block.directive.startswith("skip")]
    assert len(skipped) <= 8, f"too many doc examples are skipped: {skipped}"


def test_caps_keep_what_a_command_means_and_only_shrink_it():
    argv = ["compare", "simulations/demo.toml", "--set", "federation.rounds=3", "--strategies", "fedavg,local"]
    capped = capped_argv(argv + ["--seeds", "3"])
    assert capped[: len(argv) + 2] == argv + ["--seeds", "3"]
    extra = capped[len(argv) + 2 :]
    assert "federation.rounds=1" in extra and "federation.clients=3" in extra and extra[-2:] == ["--seeds", "1"]
    assert "strategy.name" not in " ".join(extra)
    assert capped_argv(["layers", "--model", "cnn", "--dataset", "digits"]) == ["layers", "--model", "cnn",
                                                                                 "--dataset", "digits"]  # fmt: skip


def test_shell_commands_join_continuations_and_drop_comments_and_output():
    code = "fedlayer run a.toml \\\n    --out runs/x   # a comment\n\nexport A=1 B=2\n"
    assert shell_commands(code) == [["fedlayer", "run", "a.toml", "--out", "runs/x"], ["export", "A=1", "B=2"]]
    assert shell_commands("$ fedlayer layers --model cnn\ncnn (norm=none)\n", prompt=True) == [
        ["fedlayer", "layers", "--model", "cnn"]
    ]


@pytest.mark.slow
def test_readme_demo_command_on_flowers_simulation_engine(tmp_path, monkeypatch):
    """The README's demo command, capped, on Flower's real simulation engine (Ray), as a user runs it."""
    demo = next(block for block in BLOCKS if block.page.name == "README.md" and "fedlayer compare" in block.code)
    (argv,) = demo.fedlayer()
    (tmp_path / "simulations").symlink_to(ROOT / "simulations")
    monkeypatch.chdir(tmp_path)
    from fedlayer.cli import main

    assert main(capped_argv(argv[1:])) == 0
    assert (tmp_path / "runs" / "demo" / "comparison.parquet").is_file()
