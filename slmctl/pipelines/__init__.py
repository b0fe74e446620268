"""Verb pipelines: artifact in -> method -> artifact out, with provenance. Only io/ touches disk."""
