"""Networks: records and IPAM in Redis, the Docker network API, and container endpoints."""
