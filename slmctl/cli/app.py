"""Root app. main() maps errors to a message on stderr and an exit code (0 ok, 1 error, 2 usage, 3 gate)."""

from __future__ import annotations

import os
import sys

import click
import typer

from .. import __version__
from ..errors import SlmctlError

app = typer.Typer(
    name="slmctl",
    help="Make small language models smaller, faster and portable.\n\n"
         "stdout carries only the result (a path, or JSON with --json); logs go to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"slmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Make small language models smaller, faster and portable."""


def _register() -> None:
    from . import cmd_eval, cmd_export, cmd_inspect

    app.command("inspect")(cmd_inspect.inspect)
    app.command("export")(cmd_export.export)
    app.command("eval")(cmd_eval.eval_)


_register()


def _report(err: SlmctlError) -> None:
    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("SLMCTL_DEBUG") == "1"
    try:
        rv = app(args=argv, prog_name="slmctl", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except SlmctlError as err:
        if debug:
            import traceback

            traceback.print_exc()
        _report(err)
        return err.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show(file=sys.stderr)
        return 2 if isinstance(e, click.UsageError) else 1
    except click.exceptions.Abort:
        print("error: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as ripgrep does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 1
    except OSError as e:
        if debug:
            raise
        import errno

        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: no space left on device ({e.filename or 'output'})", file=sys.stderr)
        else:
            print(f"error: {e.strerror or e} ({e.filename})" if e.filename else f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so briefly, traceback only in debug mode
        if debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: rerun with SLMCTL_DEBUG=1 for a traceback, and report it", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())
