"""Pieces every Berth process shares: logging, node records, Linux syscalls, mounts."""
