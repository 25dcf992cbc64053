"""The ``clarke`` command line."""
