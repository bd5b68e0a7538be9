"""Containers: Redis records, create-body handling, Docker JSON views, and the backend."""
