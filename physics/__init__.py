"""Hard-constraint PDE layers with a parallel mixture of experts."""
