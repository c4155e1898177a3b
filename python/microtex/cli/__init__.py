"""The ``microtex`` command line: :mod:`.main` parses, one module per command runs."""

from microtex.cli.main import main

__all__ = ["main"]
