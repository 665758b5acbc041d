"""Brokers written with the public SDK only, as our users would write them.

- ``servicebay.examples.sandbox:broker`` — the reference broker for tests, demos, the benchmark
  and the conformance self-test (plans ``sync``, ``async``, ``param``, ``unbindable``,
  ``rotatable``).
- ``servicebay.examples.minimal:broker`` — the complete under-40-line broker shown in
  ``docs/broker-sdk.md`` (a test checks the two are identical and runs it).
"""
