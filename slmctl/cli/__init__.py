"""The command line: a thin Typer layer, one module per verb."""
