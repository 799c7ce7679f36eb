"""`fedlayer bench <name>`: each module times fedlayer against a baseline measured in the same run."""

DEFAULT_CONFIG = "simulations/demo.toml"


def add_config_arguments(parser) -> None:
    """--config and --set: the experiment whose settings a benchmark uses."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment config (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a value"
    )
