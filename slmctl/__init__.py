"""slmctl: make small language models smaller, faster and portable."""

__version__ = "0.1.0.dev0"
