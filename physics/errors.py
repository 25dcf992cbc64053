"""Errors raised by the physics package (one-line, user-facing messages)."""


class PhysicsError(Exception):
    """A user-facing failure of the PDE layer: bad problem name, bad decomposition, diverging solve."""
