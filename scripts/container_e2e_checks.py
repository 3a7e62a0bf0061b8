"""Checks that scripts/container-e2e.sh runs from the host against the service in a container and against Prometheus.

Each command exits 0 when every check passes and 1 with a message naming the first failure. Uses only what the
project's test environment has (scikit-image for real photographs, prometheus-client's parser, websockets).

    python scripts/container_e2e_checks.py predict    http://127.0.0.1:8000 --model fer-cnn-48
    python scripts/container_e2e_checks.py metrics    http://127.0.0.1:8000 --model fer-cnn-48
    python scripts/container_e2e_checks.py prometheus http://127.0.0.1:9090 \\
        --dashboard docker/grafana/dashboards/fer-service.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Eileen Collins' face in ``skimage.data.astronaut()`` (x, y, width, height), measured by hand.
ASTRONAUT_FACE = (178, 68, 93, 93)


class CheckFailed(Exception):
    """One check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, Message, bytes]:
    """One HTTP exchange; 4xx/5xx come back as results, not exceptions. Headers look up case-insensitively."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def multipart(field: str, filename: str, content_type: str, payload: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax2, bx2) - max(a[0], b[0])) * max(0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def check_face_result(result: dict[str, Any], model: str, where: str) -> None:
    """The /predict answer for the astronaut photograph: one face, at the right place, a valid distribution."""
    check(result["model"]["name"] == model, f"{where}: model {result['model']} is not {model}")
    check((result["image"]["width"], result["image"]["height"]) == (512, 512), f"{where}: image size {result['image']}")
    faces = result["faces"]
    check(len(faces) == 1, f"{where}: expected the astronaut's one face, got {len(faces)}: {faces}")
    face = faces[0]
    box = (face["box"]["x"], face["box"]["y"], face["box"]["width"], face["box"]["height"])
    check(overlap(box, ASTRONAUT_FACE) > 0.5, f"{where}: face box {box} is not on the face {ASTRONAUT_FACE}")
    probabilities = face["probabilities"]
    check(
        math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3),
        f"{where}: probabilities sum to {sum(probabilities.values())}",
    )
    check(face["emotion"] == max(probabilities, key=probabilities.get), f"{where}: emotion is not the top label")
    check(
        math.isclose(face["confidence"], probabilities[face["emotion"]], abs_tol=1e-6),
        f"{where}: confidence is not the top probability",
    )


def cmd_predict(args: argparse.Namespace) -> str:
    from skimage import data as skdata

    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    astronaut = skdata.astronaut()

    status, _, body = http(
        "POST", f"{base}/predict", encode(astronaut, "JPEG"), {**headers, "Content-Type": "image/jpeg"}
    )
    check(status == 200, f"raw JPEG /predict answered {status}: {body[:300]!r}")
    check_face_result(json.loads(body), args.model, "raw JPEG body")

    form, content_type = multipart("file", "astronaut.png", "image/png", encode(astronaut, "PNG"))
    status, _, body = http("POST", f"{base}/predict", form, {**headers, "Content-Type": content_type})
    check(status == 200, f"multipart PNG /predict answered {status}: {body[:300]!r}")
    check_face_result(json.loads(body), args.model, "multipart PNG upload")

    status, _, body = http(
        "POST", f"{base}/predict", encode(skdata.coffee(), "JPEG"), {**headers, "Content-Type": "image/jpeg"}
    )
    check(status == 200 and json.loads(body)["faces"] == [], f"no-face photo: {status} {body[:300]!r}")

    status, _, body = http(
        "POST", f"{base}/predict", b"this is not an image", {**headers, "Content-Type": "image/jpeg"}
    )
    error = json.loads(body)
    check(
        400 <= status < 500 and isinstance(error, dict) and "code" in json.dumps(error),
        f"a non-image body answered {status}: {body[:300]!r}",
    )

    faces = asyncio.run(websocket_frame(base, encode(astronaut, "JPEG"), args.api_key))
    check(len(faces) == 1, f"WebSocket frame: expected one face, got {faces}")
    return "predict: raw JPEG and multipart PNG find the astronaut's face; no-face photo, bad body and WebSocket ok"


async def websocket_frame(base: str, frame: bytes, api_key: str | None) -> list[dict[str, Any]]:
    """Send one frame over /ws/stream and return the faces of the first result message."""
    import websockets

    url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws/stream"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with websockets.connect(url, additional_headers=headers, open_timeout=30) as socket:
        await socket.send(frame)
        async with asyncio.timeout(60):
            while True:
                message = json.loads(await socket.recv())
                if "faces" in message:
                    return message["faces"]
                check("error" not in message and message.get("type") != "error", f"WebSocket error: {message}")


def scrape(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from the service's /metrics, parsed by prometheus-client."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = http("GET", f"{base}/metrics")
    check(status == 200, f"/metrics answered {status}")
    content_type = headers.get("Content-Type", "")
    check(content_type.startswith("text/plain"), f"/metrics content type {content_type}")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], sample: str, **labels: str) -> float:
    """Sum of a sample's values over the series whose labels include ``labels``."""
    return sum(value for got, value in samples.get(sample, []) if all(got.get(k) == v for k, v in labels.items()))


def cmd_metrics(args: argparse.Namespace) -> str:
    samples = scrape(args.url.rstrip("/"))
    predicts = total(samples, "fer_http_requests_total", route="/predict", method="POST", status="200")
    check(predicts >= 3, f"fer_http_requests_total for 200 /predict is {predicts}, expected at least 3")
    check(total(samples, "fer_batch_size_count") >= 1, "no model call counted in fer_batch_size")
    check(total(samples, "fer_faces_per_image_count") >= 3, "fer_faces_per_image counted fewer than 3 images")
    check(total(samples, "fer_images_without_face_total") >= 1, "the no-face photo is not in fer_images_without_face")
    check(total(samples, "fer_model_info", name=args.model) == 1, f"fer_model_info has no name={args.model}")
    check(total(samples, "fer_model_load_seconds") > 0, "fer_model_load_seconds is not set")
    return f"metrics: {int(predicts)} answered /predict, model info and histograms present"


def prometheus_query(base: str, query: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    answer = json.loads(body)
    check(status == 200 and answer.get("status") == "success", f"query {query!r}: {status} {answer}")
    return answer["data"]


def cmd_prometheus(args: argparse.Namespace) -> str:
    base = args.url.rstrip("/")
    deadline = time.monotonic() + args.timeout
    while True:  # the first scrape happens within one scrape interval (5 s) of start-up
        try:
            up = prometheus_query(base, 'up{job="fer"}')["result"]
            series = prometheus_query(base, 'fer_http_requests_total{route="/predict"}')["result"]
            if up and up[0]["value"][1] == "1" and series:
                break
        except (OSError, CheckFailed):
            pass
        check(time.monotonic() < deadline, f"no fer series in Prometheus after {args.timeout} s")
        time.sleep(1)

    status, _, body = http("GET", f"{base}/api/v1/label/__name__/values")
    names = set(json.loads(body)["data"])
    dashboard = json.loads(Path(args.dashboard).read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {n for e in exprs for n in re.findall(r"\bfer_[a-z_]+", e)}
    missing = sorted(used - names)
    check(not missing, f"dashboard metrics that the service did not export to Prometheus: {missing}")
    for expr in exprs:  # valid PromQL against the real server ($__rate_interval is Grafana's)
        prometheus_query(base, expr.replace("$__rate_interval", "1m"))

    status, _, body = http("GET", f"{base}/api/v1/rules")
    rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
    # Evaluated every 15 s: a rule not run yet is "unknown"; one that fails to evaluate is "err".
    check(len(rules) >= 4 and all(r["health"] != "err" for r in rules), f"alert rules not loaded or failing: {rules}")
    return (
        f"prometheus: target up, {len(names & used)} fer metrics arrived, {len(exprs)} dashboard queries valid, "
        f"{len(rules)} alert rules loaded"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("predict", cmd_predict), ("metrics", cmd_metrics), ("prometheus", cmd_prometheus)):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--model", default="fer-cnn-48", help="expected model name")
        p.add_argument("--api-key")
        p.add_argument("--dashboard", default="docker/grafana/dashboards/fer-service.json")
        p.add_argument("--timeout", type=float, default=60)
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        print(args.func(args))
    except CheckFailed as failure:
        print(f"CHECK FAILED ({args.command}): {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
