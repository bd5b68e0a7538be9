"""Images: the Redis index, Docker JSON views and the backend for the image routes."""
