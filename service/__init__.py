"""Facial-expression recognition inference service (FastAPI). Start it with ``python -m service``."""

import sys

# OpenVINO's usage telemetry off in every process that imports the service (the server, its detection workers,
# anything that loads a model), whichever import reaches OpenVINO first: ``openvino_telemetry`` forks a process per
# event from a worker thread, and offline such a child can hang for good holding the service's stdout/stderr open.
# Without the module, OpenVINO (and NNCF) fall back to their own no-op stubs. See service.runtimes.import_openvino.
if "openvino_telemetry" not in sys.modules:
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
