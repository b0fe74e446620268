from __future__ import annotations

from .options import JsonOpt, QuietOpt
from .output import Output


def plugins(json: JsonOpt = False, quiet: QuietOpt = False) -> int:
    """List the target plugins that loaded, their source and version, and the targets they add with the
    formats each takes. SLMCTL_LOAD_PLUGINS=name,name (or empty) limits which installed plugins load."""
    from ..targets.manager import ENV, manager

    out = Output(json, quiet)
    mgr = manager()
    infos = mgr.plugins()
    targets = mgr.targets()
    doc = {"plugins": [p.as_dict() for p in infos],
           "targets": [{**t.info(), "plugin": pname,
                        "source": next(p.source for p in infos if p.name == pname)}
                       for _, (t, pname) in sorted(targets.items())]}
    for p in infos:
        if p.error:
            out.warn(f"plugin {p.name!r} failed to load: {p.error}")
    rows = [("target", "plugin", "source", "formats", "exports", "devices / status")]
    for t in doc["targets"]:
        status = ", ".join(t["devices"]) if t["available"] else f"unavailable: {t['unavailable_reason']}"
        rows.append((t["name"], t["plugin"], t["source"], ", ".join(t["formats"]), t["exports"] or "-", status))
    for p in infos:
        if p.error:
            rows.append(("-", p.name, p.source, "-", "-", f"BROKEN: {p.error}"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    human = "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1] for r in rows)
    plugin_lines = [f"{p.name} {p.version or ''} ({p.source}{', ' + p.distribution if p.distribution else ''})"
                    for p in infos]
    human += "\n\nplugins: " + "; ".join(plugin_lines)
    out.log(f"({ENV} controls which installed plugins load)")
    out.result(doc, human=human)
    return 0
