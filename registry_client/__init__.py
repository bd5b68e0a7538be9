"""OCI distribution v2 client: references now; pull/push, token auth and manifest lists to come
(see the images and registries issue)."""
