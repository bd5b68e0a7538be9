"""Berth's shim: the containers of one host (see :mod:`shim.api`)."""
