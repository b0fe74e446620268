from .cli.app import entry

entry()
