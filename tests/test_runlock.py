"""One run per folder: live writers, stale locks, earlier runs, unwritable folders; a faithful config.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedlayer.cli import main as cli
from fedlayer.config import load_config
from fedlayer.errors import RunError
from fedlayer.runlock import LOCK_FILE, claim
from fedlayer.server_app import FederatedRun

CONFIG = """\
seed = 0
[data]
dataset = "digits"
partition = "iid"
[model]
name = "mlp"
[federation]
clients = 3
rounds = 1
[analysis]
every = 0
"""


def write_lock(folder: Path, pid: int) -> None:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "fedlayer run x"}))


def test_a_folder_a_live_process_writes_is_refused_naming_the_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "run", holder.pid)
        with pytest.raises(RunError, match=rf"being written by process {holder.pid} \(fedlayer run x"):
            with claim(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_processs_lock_is_taken_over_with_a_note_and_released_at_the_end(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path / "run", int(finished.stdout))
    notes = []
    with claim(tmp_path / "run", note=notes.append) as folder:
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert notes == [f"took over the lock of process {int(finished.stdout)}, which no longer runs"]
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ZeroDivisionError), claim(tmp_path / "run"):
        1 / 0  # noqa: B018
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_an_unwritable_output_folder_is_an_error_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot write to the output folder"):
        with claim(blocker / "run"):
            pass


def test_a_second_run_into_a_finished_runs_folder_is_refused_unless_overwrite(tmp_path, in_process, capsys):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert cli(["run", str(config), "--out", str(out)]) == 0
    (out / "report.md").write_text("the old report")
    assert cli(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "report.md").read_text() == "the old report"  # nothing was touched
    assert cli(["run", str(config), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "report.md").exists()  # cleared first: nothing contradicts the new tables
    assert "cleared the earlier run" in capsys.readouterr().err
    assert (out / "metrics.parquet").exists() and not (out / LOCK_FILE).exists()


def test_the_saved_config_says_where_the_run_went_and_names_the_strategy_file_absolutely(
    tmp_path, in_process, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_strategy.py").write_text(
        textwrap.dedent(
            """
            from flwr.serverapp.strategy import FedAvg

            class MyFedAvg(FedAvg):
                pass
            """
        )
    )
    (work / "config.toml").write_text(
        CONFIG + '[strategy]\nclass = "my_strategy.py:MyFedAvg"\n[output]\ndir = "runs/x"\n'
    )
    monkeypatch.chdir(work)
    assert cli(["run", "config.toml", "--out", str(tmp_path / "elsewhere")]) == 0
    saved = load_config(tmp_path / "elsewhere" / "config.toml")
    assert saved.output.dir == str((tmp_path / "elsewhere").resolve())
    assert saved.strategy.class_ == f"{(work / 'my_strategy.py').resolve()}:MyFedAvg"
    monkeypatch.chdir(tmp_path)  # somewhere the relative file name means nothing
    run = FederatedRun.resume(tmp_path / "elsewhere")
    assert run.resumed is not None and run.resumed.finished
