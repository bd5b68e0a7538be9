"""Volumes: their records in Redis, the mounts of containers, the ``/volumes`` API."""
