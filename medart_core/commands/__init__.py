"""Subcommands of `python -m medart_core`; each module has `add_arguments(parser)` and `run(args)`."""
