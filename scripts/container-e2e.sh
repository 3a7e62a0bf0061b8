#!/usr/bin/env bash
# Container end-to-end test: build the real Dockerfile, run the image, talk to it from the host, scrape it with a
# real Prometheus, stop it with SIGTERM, then bring the docker-compose stack up and down.
#
#   scripts/container-e2e.sh
#   FER_E2E_TARGET=lean scripts/container-e2e.sh    # the image without TensorFlow (Dockerfile target `lean`)
#
# Engine: with a reachable Docker engine (DOCKER_HOST or /var/run/docker.sock) it uses that one, and the engine
# pulls python:3.11-slim as usual. Without one (the offline CI machine; root needed) it starts Debian's dockerd under
# a temporary data root and imports a debootstrap-built stand-in as python:3.11-slim (cached in
# ~/.cache/fer-e2e). FER_E2E_ENGINE=own forces the latter, FER_E2E_ENGINE=existing the former.
#
# Needs: docker (+ dockerd, debootstrap for an own engine), docker-compose (1.29 or v2), prometheus (Debian
# package), and the project's test environment in .venv (scikit-image, prometheus-client, websockets).
# Everything it starts (dockerd, containers, the compose project, prometheus) it stops again by PID/ID on exit.
# Takes about 3-4 minutes cold on a 2-core machine, most of it debootstrap and the image build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PYTHON=${FER_E2E_PYTHON:-$ROOT/.venv/bin/python}
IMAGE=${FER_E2E_IMAGE:-fer-service:e2e}
TARGET=${FER_E2E_TARGET:-runtime}  # a Dockerfile stage: runtime (the default image) or lean
BASE_IMAGE=python:3.11-slim  # the Dockerfile's only FROM
MODEL_NAME=${FER_E2E_MODEL_NAME:-fer-cnn-48}
CACHE=${FER_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fer-e2e}
DEBIAN_MIRROR=${FER_E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}
READY_TIMEOUT=${FER_E2E_READY_TIMEOUT:-240}
# Debian's 20.10 client talks to Debian's 20.10 dockerd without BuildKit surprises; any docker CLI works otherwise.
if [[ -z "${DOCKER:-}" ]]; then DOCKER=$(command -v /usr/bin/docker docker | head -n1 || true); fi
if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose); else COMPOSE=("$DOCKER" compose); fi

WORK=$(mktemp -d /tmp/fer-e2e.XXXXXX)  # short: the engine's socket path must stay under 108 bytes
PROJECT=fer-e2e-$$
STARTED=$SECONDS
DOCKERD_PID="" PROM_PID="" CONTAINERS=() COMPOSE_UP="" BUILT=""

log() { printf '[e2e %4ds] %s\n' $((SECONDS - STARTED)) "$*"; }
fail() { log "FAILED: $*"; exit 1; }
docker() { "$DOCKER" "$@"; }

cleanup() {
    local status=$?
    set +e
    if ((status != 0)); then
        for id in "${CONTAINERS[@]}"; do
            log "last log lines of container ${id:0:12}:"; docker logs --tail 40 "$id" 2>&1 | sed 's/^/    /'
        done
        [[ -n "$PROM_PID" ]] && { log "prometheus log:"; tail -n 20 "$WORK/prometheus/log" | sed 's/^/    /'; }
    fi
    if [[ -n "$COMPOSE_UP" ]]; then
        "${COMPOSE[@]}" -p "$PROJECT" down --volumes --timeout 10 >/dev/null 2>&1
    fi
    for id in "${CONTAINERS[@]}"; do docker rm --force "$id" >/dev/null 2>&1; done
    if [[ -n "$PROM_PID" ]]; then kill "$PROM_PID" 2>/dev/null; wait "$PROM_PID" 2>/dev/null; fi
    if [[ -n "$DOCKERD_PID" ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
        # Anything the engine left mounted under its data root, deepest first, before removing it.
        awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    elif [[ -n "$BUILT" ]]; then
        docker image rm "$IMAGE" >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    if ((status == 0)); then log "PASSED"; else log "FAILED (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# grep in a container's log (captured first: `docker logs | grep -q` fails under pipefail when grep exits early).
log_has() { docker logs "$1" >"$WORK/container.log" 2>&1; grep -q -- "$2" "$WORK/container.log"; }

# The host port Docker published for the container's 8000 (first line of `docker port`, e.g. 127.0.0.1:32768).
host_port() { local mapping; mapping=$(docker port "$1" 8000/tcp); mapping=${mapping%%$'\n'*}; echo "${mapping##*:}"; }

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until the container's own HEALTHCHECK (GET /readyz from inside) says healthy.
wait_healthy() {
    local id=$1 deadline=$((SECONDS + READY_TIMEOUT)) state
    while :; do
        state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
        case "$state" in
            "running healthy") return 0 ;;
            exited* | dead*) fail "container ${id:0:12} stopped before becoming healthy ($state)" ;;
        esac
        ((SECONDS < deadline)) || fail "container ${id:0:12} not healthy after ${READY_TIMEOUT}s ($state)"
        sleep 2
    done
}

# --- preflight ------------------------------------------------------------------------------------------------
for tool in "$DOCKER" "${COMPOSE[0]}" prometheus; do
    command -v "$tool" >/dev/null || fail "$tool not found (Debian: apt-get install docker.io docker-compose prometheus)"
done
"$PYTHON" -c 'import skimage, prometheus_client, websockets' 2>/dev/null \
    || fail "$PYTHON lacks the test environment (pip install '.[test]' into .venv first)"
[[ -d models/$MODEL_NAME ]] || fail "models/$MODEL_NAME is missing: the image bakes in the default model"

# --- engine ---------------------------------------------------------------------------------------------------
engine=${FER_E2E_ENGINE:-auto}
if [[ $engine == auto ]]; then
    if docker info >/dev/null 2>&1; then engine=existing; else engine=own; fi
fi
if [[ $engine == own ]]; then
    command -v dockerd >/dev/null || fail "dockerd not found (Debian: apt-get install docker.io)"
    ((EUID == 0)) || fail "starting an own dockerd needs root"
    log "starting dockerd under $WORK"
    dockerd --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
        --host "unix://$WORK/docker.sock" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$WORK/docker.sock"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log"; fail "dockerd did not come up"; }
fi
log "engine: $engine ($(docker version --format '{{.Server.Version}}'))"

# --- base image -----------------------------------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ $engine == own ]]; then
        standin=$CACHE/python-3.11-slim-standin-bookworm.tar
        if [[ ! -s $standin ]]; then
            command -v debootstrap >/dev/null || fail "debootstrap not found (Debian: apt-get install debootstrap)"
            log "building the stand-in for $BASE_IMAGE with debootstrap (Debian's Python 3.11)"
            rootfs=$WORK/rootfs
            debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
                bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
                || { tail -n 20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
            # Trust the same extra CAs as the host (a TLS-inspecting proxy) so pip inside `docker build` works.
            if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
                cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
                chroot "$rootfs" update-ca-certificates >>"$WORK/debootstrap.log" 2>&1
            fi
            rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
            mkdir -p "$CACHE"
            tar -C "$rootfs" -cf "$standin.part" . && mv "$standin.part" "$standin"
            rm -rf "$rootfs"
        fi
        log "importing the stand-in as $BASE_IMAGE"
        docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            --change 'CMD ["python3"]' "$standin" "$BASE_IMAGE" >/dev/null
    else
        log "pulling $BASE_IMAGE"
        docker pull --quiet "$BASE_IMAGE" >/dev/null
    fi
fi

# --- build ----------------------------------------------------------------------------------------------------
log "docker build --target $TARGET -t $IMAGE ."
build_started=$SECONDS
docker build --target "$TARGET" --tag "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "docker build failed"; }
BUILT=1
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "built in $((SECONDS - build_started))s; image size $((size / 1000000)) MB ($(awk -v s="$size" 'BEGIN {printf "%.2f", s / 1e9}') GB)"
[[ $(docker image inspect --format '{{.Config.User}}' "$IMAGE") == 10001:10001 ]] || fail "image does not run as 10001"

# --- run: the image as Kubernetes runs it (read-only root, writable /tmp only, no capabilities) ------------------
run_hardened() {
    docker run --detach --publish 127.0.0.1::8000 --read-only --tmpfs /tmp:size=64m --cap-drop ALL \
        --security-opt no-new-privileges "$@"
}
run_at=$("$PYTHON" -c 'import time; print(time.time())')
id=$(run_hardened --name "$PROJECT-run" "$IMAGE")
CONTAINERS+=("$id")
port=$(host_port "$id")
# The image's start-up time: from `docker run` until /readyz answers 200 from the host (model loaded and warmed
# up). Read here, not from the HEALTHCHECK, whose 10 s interval is too coarse; logged, never asserted.
"$PYTHON" - "$port" "$run_at" "$READY_TIMEOUT" <<'PY' || fail "/readyz never answered 200"
import sys, time, urllib.request
port, run_at, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while time.time() - run_at < limit:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
            break
    except OSError:
        pass
    time.sleep(0.1)
else:
    sys.exit(1)
print(f"[e2e] ready {time.time() - run_at:.1f}s after docker run (/readyz 200 from the host)")
PY
log "container ${id:0:12} on 127.0.0.1:$port; waiting for its HEALTHCHECK"
wait_healthy "$id"
log "healthy"
url=http://127.0.0.1:$port
docker exec "$id" python -c '
import importlib.util, os
assert os.getuid() == 10001, os.getuid()
unwanted = [m for m in ("training", "sklearn", "matplotlib", "tqdm", "pytest", "skimage", "httpx") if importlib.util.find_spec(m)]
assert not unwanted, f"training/test packages in the image: {unwanted}"
' || fail "the image carries training/test packages or runs as the wrong user"
"$PYTHON" scripts/container_e2e_checks.py predict "$url" --model "$MODEL_NAME"
"$PYTHON" scripts/container_e2e_checks.py metrics "$url" --model "$MODEL_NAME"

# --- Prometheus (Debian's package) with the project's scrape configuration, pointed at this container ------------
mkdir -p "$WORK/prometheus"
sed "s/fer:8000/127.0.0.1:$port/" docker/prometheus/prometheus.yml >"$WORK/prometheus/prometheus.yml"
cp docker/prometheus/alerts.yml "$WORK/prometheus/"
prom_port=$(free_port)
prometheus --config.file="$WORK/prometheus/prometheus.yml" --storage.tsdb.path="$WORK/prometheus/data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$WORK/prometheus/log" 2>&1 &
PROM_PID=$!
log "prometheus (pid $PROM_PID) on 127.0.0.1:$prom_port scraping the container"
"$PYTHON" scripts/container_e2e_checks.py prometheus "http://127.0.0.1:$prom_port" --timeout 90
kill "$PROM_PID"; wait "$PROM_PID" 2>/dev/null || true; PROM_PID=""

# --- SIGTERM: the server finishes and exits 0 ------------------------------------------------------------------
log "SIGTERM to the container"
docker kill --signal TERM "$id" >/dev/null
code=$(timeout 60 "$DOCKER" wait "$id") || fail "container did not exit within 60 s of SIGTERM"
[[ $code == 0 ]] || fail "container exited with $code after SIGTERM"
log_has "$id" "Application shutdown complete" || fail "no clean application shutdown in the log"
log "exited 0 after a clean shutdown"

# --- a model from a volume instead of the baked one; a missing model refuses to start -------------------------
id=$(run_hardened --name "$PROJECT-volume" --volume "$ROOT/models/$MODEL_NAME:/models/mounted:ro" \
    --env FER_MODEL_DIR=/models/mounted "$IMAGE")
CONTAINERS+=("$id")
wait_healthy "$id"
log_has "$id" '"path": "/models/mounted/' || fail "the log does not show the mounted model being loaded"
"$PYTHON" scripts/container_e2e_checks.py predict "http://127.0.0.1:$(host_port "$id")" \
    --model "$MODEL_NAME" >/dev/null
docker rm --force "$id" >/dev/null
log "model mounted from a volume (FER_MODEL_DIR=/models/mounted) serves"
id=$(run_hardened --name "$PROJECT-nomodel" --env FER_MODEL_DIR=/models/missing "$IMAGE")
CONTAINERS+=("$id")
code=$(timeout 120 "$DOCKER" wait "$id") || fail "a container without a model did not exit"
[[ $code == 2 ]] || fail "a container without a model exited with $code, expected 2"
log_has "$id" "^error: cannot serve the model" || fail "no one-line refusal in the log of the model-less container"
log "missing model: exit 2 with '$(grep -m1 '^error:' "$WORK/container.log")'"

# --- docker-compose: the default stack (the service; monitoring is behind the `monitoring` profile) ------------
compose_port=$(free_port)
# The stack passes some FER_* variables through from this shell: test it with the shipped defaults.
for variable in $(compgen -e | grep '^FER_' | grep -v '^FER_E2E_' || true); do unset "$variable"; done
export FER_IMAGE=$IMAGE FER_PUBLISHED_PORT=$compose_port
log "${COMPOSE[*]} -p $PROJECT up -d (port $compose_port)"
COMPOSE_UP=1
"${COMPOSE[@]}" -p "$PROJECT" up --detach --no-build >"$WORK/compose.log" 2>&1 \
    || { cat "$WORK/compose.log"; fail "docker-compose up failed"; }
id=$("${COMPOSE[@]}" -p "$PROJECT" ps -q fer)
CONTAINERS+=("$id")
running=$(docker ps --quiet --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
((running == 1)) || fail "the default compose stack runs $running containers, expected only the service"
wait_healthy "$id"
"$PYTHON" scripts/container_e2e_checks.py predict "http://127.0.0.1:$compose_port" --model "$MODEL_NAME"
"${COMPOSE[@]}" -p "$PROJECT" down --volumes --timeout 40 >>"$WORK/compose.log" 2>&1 || fail "docker-compose down failed"
COMPOSE_UP=""
log "compose stack up, answered, and down"

log "image $IMAGE: $((size / 1000000)) MB; total $((SECONDS - STARTED))s"
