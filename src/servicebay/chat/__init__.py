"""servicebay.chat: the chat service whose messages are never lost.

Layout, following a message: ``protocol`` (frames and limits) → ``server`` (WebSocket sessions,
routes) and ``http_api`` (bound apps) → ``service`` (room hubs: ordering, fan-out, acks,
presence) → ``stores`` (durable log: ``sqlite`` embedded, RabbitMQ by binding). ``client`` is the
resuming Python client, ``web/`` the page, ``settings`` and ``metrics`` the process's settings
and Prometheus metrics. The wire protocol is documented in docs/chat-protocol.md.
"""
