"""Command-line subcommands, one module each (see ``linattn/__main__.py``)."""
