"""Root app. main() maps errors to a message on stderr and an exit code (0 ok, 1 error, 2 usage, 3 gate)."""

from __future__ import annotations

import os
import sys

import typer


def _exc(name: str) -> tuple[type, ...]:
    """Exception classes called ``name`` in Typer and in Click: Typer 0.2x vendors its own Click,
    older releases raise the real one's, so match both (this is why Typer is pinned)."""
    import importlib

    found = []
    for mod in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found) or (type(f"_Never{name}", (Exception,), {}),)


_EXIT, _USAGE, _CLICK, _ABORT = _exc("Exit"), _exc("UsageError"), _exc("ClickException"), _exc("Abort")

from .. import __version__
from ..errors import GateFailed, SlmctlError

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


# verb -> (module in slmctl.cli, function). One module per verb; a verb whose module is not there
# yet is simply not offered.
COMMANDS = [
    ("inspect", "cmd_inspect", "inspect"),
    ("export", "cmd_export", "export"),
    ("eval", "cmd_eval", "eval_"),
    ("quantize", "cmd_quantize", "quantize"),
    ("prune", "cmd_prune", "prune"),
    ("merge", "cmd_merge", "merge"),
    ("distill", "cmd_distill", "distill"),
    ("profile", "cmd_profile", "profile"),
    ("card", "cmd_card", "card"),
    ("plugins", "cmd_plugins", "plugins"),
]


def _register() -> None:
    import importlib

    for verb, module, func in COMMANDS:
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{module}":
                continue
            raise
        app.command(verb)(getattr(mod, func))


_register()


def _report(err: SlmctlError) -> None:
    if isinstance(err, GateFailed):  # the result is already printed: one line per gate crossed
        for f in err.failed:
            print(f"{err.label}: {f}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return
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
    except _EXIT as e:
        return e.exit_code
    except _CLICK as e:
        e.show(file=sys.stderr)
        return 2 if isinstance(e, _USAGE) else 1
    except _ABORT:
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
