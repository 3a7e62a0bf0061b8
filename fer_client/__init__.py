"""Command-line stream client of the facial-expression recognition service (``python -m fer_client``).

A package of its own, apart from the service: it speaks only HTTP and WebSocket to a running service and imports
nothing from it. Its dependencies are the ``client`` extra (``pip install -e '.[client]'``).
"""
