"""One output sink: the result on stdout; logs, warnings, hints and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable


class Output:
    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def result(self, value: Any, human: str | None = None) -> None:
        """Print the result: one JSON document with --json, else ``human`` (or str(value))."""
        if self.json_mode:
            sys.stdout.write(json.dumps(value, indent=2, default=_default) + "\n")
        else:
            sys.stdout.write((human if human is not None else str(value)).rstrip("\n") + "\n")
        sys.stdout.flush()

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        """A tqdm bar on stderr, shown only when stderr is a terminal and not --quiet."""
        from tqdm import tqdm

        disable = self.quiet or not sys.stderr.isatty()
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, leave=False,
                    dynamic_ncols=True)


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
