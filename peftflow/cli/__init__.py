"""The `peftflow` command line: one module per command group, named after the command."""
