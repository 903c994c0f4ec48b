"""socketio-service: a horizontally scalable Socket.IO messaging service."""

__version__ = "0.1.0"
