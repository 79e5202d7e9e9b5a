"""jaxloss's benchmarks: ``python -m benchmarks [losses|linear|lm|ctc|all] [options]``, run
from the repository root. One module per suite, ``measure`` for what the benchmarks,
tests and examples share, and ``report`` for the tables the docs quote. Not part of the
installed package."""
