"""Instruction/chat turns for the calibration mix (``sample:mix``, part ``chat``).

Written for slmctl by its authors and shipped under slmctl's licence (Apache-2.0); no text here is
copied from a dataset. The conversations live in calib_chat.json beside this module (data, not code), each
a list of {role, content} turns; the calibration renders it through the model's chat template. About one in
five conversations (a fixed hash of its index) is held out for ``sample:mix:eval`` and never calibrates.
"""

import json
from pathlib import Path

CONVERSATIONS: list[list[dict[str, str]]] = json.loads(
    Path(__file__).with_name("calib_chat.json").read_text(encoding="utf-8"))
