"""The trio server: start-up, the shell that owns every task, the native front end, the store.

``startup`` opens the data directory and the store and recovers them, then runs ``shell``'s
tasks; ``connection`` is one native-protocol client; ``store`` is the only disk I/O.
"""

from .config import DEFAULT_HOST, DEFAULT_PORT, ServerAddress, ServerConfig
from .startup import serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerAddress", "ServerConfig", "serve"]
