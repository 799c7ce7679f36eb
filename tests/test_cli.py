"""The command line: global flags anywhere, required inputs named when missing."""

import pytest

from fedlayer.cli import build_parser, main
from fedlayer.errors import FedlayerError

LAYERS = ["layers", "--model", "cnn", "--dataset", "digits"]


@pytest.mark.parametrize(
    ("argv", "verbose", "debug"),
    [
        (LAYERS, False, False),
        ([*LAYERS, "--verbose"], True, False),
        (["--verbose", *LAYERS], True, False),
        (["--debug", *LAYERS, "--verbose"], True, True),  # a flag before is kept when another comes after
        (["--verbose", "--debug", *LAYERS], True, True),
        (["bench", "--debug", "barriers", "--verbose"], True, True),  # nested subcommands too
        (["bench", "memory", "--debug"], False, True),
    ],
)
def test_global_flags_work_before_and_after_the_subcommand(argv, verbose, debug):
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.debug) == (verbose, debug)


def test_debug_after_the_subcommand_shows_the_traceback(capsys):
    bad = ["layers", "--model", "no-such-model", "--dataset", "digits"]
    assert main(bad) == 2
    assert "fedlayer: error: " in capsys.readouterr().err
    with pytest.raises(FedlayerError, match="no-such-model"):
        main([*bad, "--debug"])


def test_layers_needs_a_dataset(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["layers", "--model", "cnn"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --dataset" in capsys.readouterr().err


def test_layers_help_says_why_the_dataset_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["layers", "--help"])
    assert "--dataset is required, because the layers' sizes depend on" in " ".join(capsys.readouterr().out.split())
