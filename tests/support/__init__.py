"""Helpers shared by test directories, imported as ``tests.support.<module>`` (the repository root
is on pytest's ``pythonpath``): no ``from conftest import``, no ``sys.path`` edits."""
