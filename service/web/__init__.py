"""The HTTP/WebSocket layer: routes, upload parsing, the stream, guards, response schemas, error handlers and request
observability. It imports the domain modules of ``service`` (never the other way round); ``service.app`` wires it
into an app (docs/architecture.md)."""
