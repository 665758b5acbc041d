"""Public test helpers: run a broker in-process or on a real port, with its lifespan."""
