"""Benchmarks behind ``launch/benchmark.py``: one module per subcommand (``kernels``), with
the shared timing, device and results-file helpers in ``timing``. GPU figures are only
ever taken on a GPU; the CPU smoke modes check the output format, not performance."""
