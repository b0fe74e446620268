"""Hardware targets: the Target interface, pluggy hookspecs, the plugin manager and the built-in targets."""

from .target import Session, Target
from .hookspecs import hookimpl

__all__ = ["Session", "Target", "hookimpl", "get_target", "list_plugins", "list_targets", "register_plugin",
           "unregister_plugin"]


def get_target(name: str) -> Target:
    from .manager import manager

    return manager().get(name)


def list_targets():
    from .manager import manager

    return manager().targets()


def list_plugins():
    from .manager import manager

    return manager().plugins()


def register_plugin(plugin, name: str | None = None) -> str:
    from .manager import manager

    return manager().register(plugin, name)


def unregister_plugin(name: str) -> None:
    from .manager import manager

    manager().unregister(name)
