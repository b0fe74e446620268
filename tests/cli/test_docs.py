"""The docs never drift: the CLI reference is generated from --help, and every verb has a page."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current():
    from slmctl.cli.reference import render

    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "docs/cli.md is stale: run `make docs` and commit it"


def test_every_command_has_a_page():
    import typer

    from slmctl.cli.app import app

    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("slmctl", [], resilient_parsing=True)
    pages = {"plugins": "profile.md"}  # `plugins` is documented with the targets it lists
    for name in cmd.list_commands(ctx):
        page = ROOT / "docs" / pages.get(name, f"{name}.md")
        assert page.is_file(), f"no docs page for `slmctl {name}`"
        assert f"slmctl {name}" in page.read_text()
