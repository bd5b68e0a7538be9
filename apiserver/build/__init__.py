"""The classic builder (POST /build): Dockerfile parsing, context handling, the build engine."""
