"""The experiment config: TOML in, validation with clear messages, overrides, round trips."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlayer.config import (
    Config,
    config_from_flat,
    config_hash,
    describe_fields,
    load_config,
)
from fedlayer.errors import FedlayerError


def write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_round_trip_through_toml(tmp_path):
    cfg = load_config(None)
    again = load_config(write(tmp_path, cfg.to_toml()))
    assert again == cfg


def test_sections_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
seed = 7
[data]
dataset = "fashion-mnist"
alpha = 0.1
[federation]
clients = 4
[strategy]
class = "flwr.serverapp.strategy:FedAdam"
kwargs = { eta = 0.01 }
""",
    )
    cfg = load_config(
        path, ["federation.rounds=9", "analysis.groups=layers,shallow", "strategy.average=body", "data.dataset=digits"]
    )
    assert cfg.seed == 7 and cfg.data.alpha == 0.1 and cfg.federation.clients == 4
    assert cfg.federation.rounds == 9
    assert cfg.analysis.groups == ["layers", "shallow"]
    assert cfg.strategy.class_ == "flwr.serverapp.strategy:FedAdam" and cfg.strategy.kwargs == {"eta": 0.01}
    assert cfg.strategy.average == "body"
    assert cfg.data.dataset == "digits"  # an unquoted string value is read as a string


def test_flat_run_config_round_trip():
    cfg = load_config(None, ["strategy.kwargs={eta=0.1}", "analysis.groups=layers,window:2"])
    flat = cfg.to_flat()
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert config_from_flat(flat) == cfg


def test_integer_for_float_field_is_accepted():
    assert load_config(None, ["federation.lr=1"]).federation.lr == 1.0


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("federation.rounds=-1", "'federation.rounds': invalid value -1; expected an integer >= 0"),
        ("federation.rounds=2.5", "expected an integer"),
        ("federation.clients=-3", "'federation.clients'"),
        ("data.alpha=0", "'data.alpha': invalid value 0; expected a number > 0.0"),
        ("data.dataset=imagenet", "expected one of 'digits', 'fashion-mnist'"),
        ("data.partition=sorted", "expected one of 'iid', 'dirichlet', 'pathological', 'shard'"),
        ("model.name=transformer", "'model.name'"),
        ("federation.fraction=1.5", "<= 1.0"),
        ("federation.optimizer=lion", "'sgd', 'adam'"),
        ("analysis.alphas=4", "odd number"),
        ("analysis.bases=c", "'analysis.bases'"),
        ("analysis.bn=freeze", "'interpolate', 'recompute'"),
        ("federation.min_clients=20", "more than federation.clients"),
        ("federation.nope=1", "unknown config key 'federation.nope'; valid keys in [federation]: clients"),
        ("nope=1", "unknown config key 'nope'"),
        ("data=3", "config section 'data' must be a table"),
        ("seed=true", "'seed': invalid value True"),
        ("output.checkpoints=1", "true or false"),
        ("federation.lr=nan", "'federation.lr'"),
        ("novalue", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, fragment):
    with pytest.raises(FedlayerError, match=None) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_norm_is_checked_against_the_model():
    assert load_config(None, ["model.name=resnet18", "model.norm=bn"]).model.norm == "bn"
    with pytest.raises(FedlayerError, match="for model 'mlp'"):
        load_config(None, ["model.name=mlp", "model.norm=gn"])


def test_file_errors(tmp_path):
    with pytest.raises(FedlayerError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(FedlayerError, match="is not valid TOML"):
        load_config(write(tmp_path, "[data\nx = "))
    with pytest.raises(FedlayerError, match="is a directory"):
        load_config(tmp_path)


def test_hash_ignores_output_dir_but_not_experiment():
    a, b = load_config(None), load_config(None, ["output.dir=elsewhere"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config(None, ["seed=1"]))


def test_replace_validates():
    cfg = Config().replace(strategy={"name": "local"}, seed=3)
    assert cfg.strategy.name == "local" and cfg.seed == 3
    with pytest.raises(FedlayerError):
        Config().replace(federation={"rounds": -1})


def test_every_field_is_described():
    rows = describe_fields()
    keys = [r[0] for r in rows]
    assert "federation.rounds" in keys and "strategy.class" in keys and "seed" in keys
    assert all(r[3] for r in rows), "every key needs a one-line help"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_is_an_error_or_a_config_never_a_crash(text):
    try:
        load_config(None, [f"federation.rounds={text}"])
    except FedlayerError:
        pass
