"""The package's version, in a module of its own so that any floor can read it without importing the root
(which imports ``models`` to register the student with transformers)."""

__version__ = "0.1.0"
