"""One module per `fedlayer` subcommand; see `fedlayer.cli`."""
