"""``python -m service``: parse flags / ``FER_*`` variables, start uvicorn, exit 2 if the model cannot be served."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not useful here


def main(argv: Sequence[str] | None = None) -> int:
    from service.config import settings_from_args

    # --help and bad flags exit here, before TensorFlow, uvicorn and the web layer are imported (service.config
    # itself brings in pydantic and, through the detector names of service.faces, OpenCV and NumPy).
    settings = settings_from_args(argv)

    import uvicorn

    from service.app import create_app
    from service.logs import configure_logging
    from service.server import uvicorn_config

    configure_logging(settings.log_level)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn_config(create_app(settings, on_fatal=on_fatal), settings))
    server.run()
    if fatal:
        print(f"error: cannot serve the model: {fatal[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
