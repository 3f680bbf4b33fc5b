"""The trio server: the shell that owns every task, the native front end, the store."""

from .shell import DEFAULT_HOST, DEFAULT_PORT, ServerAddress, ServerConfig, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerAddress", "ServerConfig", "serve"]
