"""How one stage runs: its plan (argv, inputs, cache key), the run's identity, result reuse,
the output-folder lease and the one child-process runner."""
