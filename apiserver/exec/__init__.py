"""``docker exec``: exec sessions of running containers (records in Redis, processes in the shim)."""
