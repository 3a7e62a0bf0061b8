# Facial-expression recognition service: CPU image with the service and the shipped default model.
#
#   docker build -t fer-service:0.1.0 .                          # runtime: TensorFlow and OpenVINO
#   docker build --target lean -t fer-service:0.1.0-lean .       # lean: OpenVINO only, no TensorFlow
#   docker run --rm -p 8000:8000 fer-service:0.1.0
#
# Stages from the same Python base: `build` installs the service's runtime dependencies (the `dependencies` of
# pyproject.toml; never the `training` or `test` extras) into a virtual environment at /opt/venv, `runtime` copies
# that environment, the default model and nothing else. `build-lean`/`lean` do the same without TensorFlow and
# Keras: the default runtime (openvino) serves the compiled IR or converts the SavedModel with OpenVINO's own
# frontend, and explains with the compiled explain IR (a version without one serves without explanations);
# --runtime tensorflow is refused there with the reason. Only `python:3.11-slim` is pulled (no `# syntax=` line, no
# other image), so the build also works on an offline CI engine with a stand-in imported under that name.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# `python3` rather than `python`: the official image has both, Debian-based stand-ins only the former.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml and the lock alone, so that editing the service does not reinstall
# TensorFlow. The lock is a constraints file: the image gets exactly the versions the test suite ran with.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt --constraint requirements.lock \
    && rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include
# (TensorFlow's C++ headers, ~290 MB, are only for compiling custom ops.)

# The service package only: `training/` and the client (`fer_client/`) are not copied, so setuptools finds no
# training or client code to install.
# README.m[d]: pyproject.toml names README.md as the long description; the glob (next to a file that always
# exists) keeps the build working in a checkout without it.
COPY pyproject.toml README.m[d] ./
COPY service/ ./service/
RUN pip install --no-deps . \
    && python -c "import service.app, service.config, service.server"


FROM python:3.11-slim AS build-lean

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# The same dependencies less TensorFlow and Keras (about 1.2 GB installed: see docs/deployment.md).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith(('tensorflow', 'keras'))))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt --constraint requirements.lock

COPY pyproject.toml README.m[d] ./
COPY service/ ./service/
RUN pip install --no-deps . \
    && python -c "import service.app, service.config, service.server, sys; assert 'tensorflow' not in sys.modules"


FROM python:3.11-slim AS lean

LABEL org.opencontainers.image.title="fer-service-lean" \
      org.opencontainers.image.description="Facial-expression recognition: batched FastAPI inference service (OpenVINO only)" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 fer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin fer

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FER_HOST=0.0.0.0 \
    FER_PORT=8000 \
    FER_RUNTIME=openvino \
    FER_MODEL_DIR=/app/models/fer-cnn-48

COPY --from=build-lean /opt/venv /opt/venv

WORKDIR /app
COPY models/ /app/models/

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FER_PORT', '8000') + '/readyz', timeout=4)"]

ENTRYPOINT ["python", "-m", "service"]


# The default target (last): TensorFlow and OpenVINO.
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="fer-service" \
      org.opencontainers.image.description="Facial-expression recognition: batched FastAPI inference service" \
      org.opencontainers.image.version="0.1.0"

# A fixed, unprivileged UID/GID (>= 10000, so it collides with no host or base-image account); Kubernetes'
# securityContext and docker-compose use the same numbers.
RUN groupadd --system --gid 10001 fer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin fer

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FER_HOST=0.0.0.0 \
    FER_PORT=8000 \
    FER_MODEL_DIR=/app/models/fer-cnn-48

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The shipped model(s). To serve another one, mount it and point FER_MODEL_DIR at it:
#   docker run -v "$PWD/models/my-model:/models/my-model:ro" -e FER_MODEL_DIR=/models/my-model ...
COPY models/ /app/models/

USER 10001:10001
EXPOSE 8000

# Healthy = model loaded and warmed up. Python, not curl: the slim base image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FER_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: the server is PID 1 and receives SIGTERM itself (graceful shutdown). Settings: FER_* variables.
ENTRYPOINT ["python", "-m", "service"]
