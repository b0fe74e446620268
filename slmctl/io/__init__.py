"""The only package that touches disk: readers, streaming writers and atomic outputs."""
