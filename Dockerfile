# Facial-expression recognition service: CPU image with the service and the shipped default model.
#
#   docker build -t fer-service:0.1.0 .                          # runtime: TensorFlow and OpenVINO
#   docker build --target lean -t fer-service:0.1.0-lean .       # lean: OpenVINO only, no TensorFlow
#   docker run --rm -p 8000:8000 fer-service:0.1.0
#
# Stages, all from the same Python base:
#   deps        a virtual environment at /opt/venv with the service's runtime dependencies (the `dependencies` of
#               pyproject.toml; never the `training` or `test` extras) except TensorFlow and Keras
#   build-lean  deps + the service package
#   build       deps + TensorFlow and Keras + the service package
#   serve       what both images share: the unprivileged user, settings, health check, entry point
#   lean        serve + build-lean's environment + the default model (FER_RUNTIME=openvino)
#   runtime     serve + build's environment + the default model (the default target: last)
# The lean image serves the compiled OpenVINO IR or converts the SavedModel with OpenVINO's own frontend, and
# explains with the compiled explain IR (a version without one serves without explanations); --runtime tensorflow
# is refused there with the reason. Only `python:3.11-slim` is pulled (no `# syntax=` line, no other image), so the
# build also works on an offline CI engine with a stand-in imported under that name.

FROM python:3.11-slim AS deps

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# `python3` rather than `python`: the official image has both, Debian-based stand-ins only the former.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml and the lock alone, so that editing the service does not reinstall
# them. The lock is a constraints file: the image gets exactly the versions the test suite ran with.
# /tmp/tensorflow.txt keeps the requirements left out here for the `build` stage.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; tf = [d for d in deps if d.startswith(('tensorflow', 'keras'))]; open('/tmp/tensorflow.txt', 'w').write('\n'.join(tf)); print('\n'.join(d for d in deps if d not in tf))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt --constraint requirements.lock


FROM deps AS build-lean

# The service package only: `training/` and the client (`fer_client/`) are not copied, so setuptools finds no
# training or client code to install.
# README.m[d]: pyproject.toml names README.md as the long description; the glob (next to a file that always
# exists) keeps the build working in a checkout without it.
COPY pyproject.toml README.m[d] ./
COPY service/ ./service/
RUN pip install --no-deps . \
    && python -c "import service.app, service.config, service.server, sys; assert 'tensorflow' not in sys.modules"


FROM deps AS build

# TensorFlow's C++ headers (~290 MB) are only for compiling custom ops.
RUN pip install --requirement /tmp/tensorflow.txt --constraint requirements.lock \
    && rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include

COPY pyproject.toml README.m[d] ./
COPY service/ ./service/
RUN pip install --no-deps . \
    && python -c "import service.app, service.config, service.server"


FROM python:3.11-slim AS serve

# A fixed, unprivileged UID/GID (>= 10000, so it collides with no host or base-image account); Kubernetes'
# securityContext and docker-compose use the same numbers.
RUN groupadd --system --gid 10001 fer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin fer

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FER_HOST=0.0.0.0 \
    FER_PORT=8000 \
    FER_MODEL_DIR=/app/models/fer-cnn-48

WORKDIR /app
EXPOSE 8000

# Healthy = model loaded and warmed up. Python, not curl: the slim base image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FER_PORT', '8000') + '/readyz', timeout=4)"]

# Exec form: the server is PID 1 and receives SIGTERM itself (graceful shutdown). Settings: FER_* variables.
ENTRYPOINT ["python", "-m", "service"]


FROM serve AS lean

LABEL org.opencontainers.image.title="fer-service-lean" \
      org.opencontainers.image.description="Facial-expression recognition: batched FastAPI inference service (OpenVINO only)" \
      org.opencontainers.image.version="0.1.0"

ENV FER_RUNTIME=openvino

COPY --from=build-lean /opt/venv /opt/venv
COPY models/ /app/models/

USER 10001:10001


# The default target (last): TensorFlow and OpenVINO.
FROM serve AS runtime

LABEL org.opencontainers.image.title="fer-service" \
      org.opencontainers.image.description="Facial-expression recognition: batched FastAPI inference service" \
      org.opencontainers.image.version="0.1.0"

ENV TF_CPP_MIN_LOG_LEVEL=2

COPY --from=build /opt/venv /opt/venv
# The shipped model(s). To serve another one, mount it and point FER_MODEL_DIR at it:
#   docker run -v "$PWD/models/my-model:/models/my-model:ro" -e FER_MODEL_DIR=/models/my-model ...
COPY models/ /app/models/

USER 10001:10001
