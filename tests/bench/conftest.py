"""The benchmarks are run by ``make bench`` (``python -m tests.bench``), never by pytest."""

collect_ignore_glob = ["*.py"]
