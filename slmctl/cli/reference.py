"""Render the CLI reference (docs/cli.md) from the commands' own --help texts.

`python -m slmctl.cli.reference > docs/cli.md` (or `make docs`) regenerates it; a test checks that
the committed page equals the generated one, so the reference never drifts from the code.
"""

from __future__ import annotations

import os
import sys


def render() -> str:
    import typer

    from .app import app

    os.environ["COLUMNS"] = "100"  # stable wrapping, whatever the terminal
    cmd = typer.main.get_command(app)
    ctx_root = cmd.make_context("slmctl", [], resilient_parsing=True)
    parts = ["# CLI reference", "",
             "Generated from the `--help` texts by `make docs` (`python -m slmctl.cli.reference`); "
             "a test fails when this page and the code disagree.", "",
             "## slmctl", "", "```", ctx_root.get_help().rstrip(), "```", ""]
    for name in cmd.list_commands(ctx_root):
        sub = cmd.get_command(ctx_root, name)
        with sub.make_context(name, [], parent=ctx_root, resilient_parsing=True) as ctx:
            parts += [f"## slmctl {name}", "", "```", ctx.get_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
