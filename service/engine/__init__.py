"""Every use of python-engineio's, python-socketio's, aiohttp's and asyncio's private internals.

Nothing outside this package reaches past a library's public API.
"""
