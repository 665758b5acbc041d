"""servicebay: the Open Service Broker API (v2.17) platform for Python.

Pieces (see DESIGN.md for the map): ``osb`` (protocol models), ``broker`` (SDK),
``client`` (platform side of the wire), ``bindings`` (app side), ``platform`` (the
service catalog), ``brokers`` (RabbitMQ, chat), ``chat`` (the chat service), ``cli`` (`bay`).
"""

__version__ = "0.1.0"
