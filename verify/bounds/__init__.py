"""Bound algorithms over the graph IR: IBP, CROWN, alpha-CROWN (operators live in ``verify.ops``)."""
