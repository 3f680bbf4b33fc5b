"""The broker's state, pure: exchanges, routing, queues, sessions, acks, flow control.

Nothing here does I/O or reads a clock; a front end drives it through the vhost facade and
drains what each call leaves behind (see docs/architecture.md).
"""
