"""Moorage: moors edge nodes, and the devices wired to them, to a cloud hub."""

__version__ = "0.1.0"
