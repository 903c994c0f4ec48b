"""The client side: :class:`ChatClient` (a reconnecting asyncio client) and the ``chat`` CLI.

Imports only the shared wire protocol, never server code, so a bot or test harness can use
it without the server's storage or engine.
"""

from .chat_client import *  # noqa: F403
from .chat_client import __all__  # noqa: F401
