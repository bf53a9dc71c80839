"""The benchmark suite runner: suite files, runs, executors and reports (CLI: ``benchmarks/suite.py``)."""
