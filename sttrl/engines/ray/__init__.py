"""The scale engine (`--engine ray`)."""
