"""Use cases of the platform: one module per resource, shared by the API and the worker."""
