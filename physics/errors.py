"""Errors raised by the physics package (one-line, user-facing messages)."""


class PhysicsError(Exception):
    """A user-facing failure of the PDE layer: bad problem name, bad decomposition, diverging solve."""


class ConfigError(PhysicsError, ValueError):
    """An invalid setting (a NaN learning rate, a negative count): a ValueError for Python callers, a one-line
    error for the CLI."""
