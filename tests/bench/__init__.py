"""``make bench``: Berth against dockerd on the same machine, interleaved, as ratios (issue 7).
Never collected by ``make test`` (no ``test_*`` modules here; see ``conftest.py``)."""
