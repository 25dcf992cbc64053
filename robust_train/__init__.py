"""Robust training on the Clarke engine: certified training, PGD-AT, TRADES, DONE, CS-IB (in progress)."""
