"""The demo page (service/static) in a real headless Chromium, against the real service in its own process.

Chromium's fake camera plays a Y4M video made here from a real photograph (scikit-image's astronaut), so the frames
the page sends over /ws/stream carry a real face. Screenshots land in test-artifacts/ (gitignored).

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` Python package, which drives that
browser; no browser is downloaded. Without /usr/bin/chromium the module is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.live_service import ARTIFACTS, TEST_API_KEY, ServiceProcess, model_labels, new_service, running_service
from tests.photos import ASTRONAUT_FACE, astronaut, iou, no_face

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install -y chromium)"
)

API_KEY = TEST_API_KEY
TIMEOUT_MS = 60_000  # generous: CI shares two cores between the browser, the service and the model

# The flags that keep Chromium headless and quiet: without the networking ones it keeps calling outside hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# The fake camera frame: the astronaut photograph (512×512) centred on a 640×480 grey canvas, scaled to 480 high.
FRAME_W, FRAME_H = 640, 480
_SCALE = FRAME_H / 512
_OFFSET_X = (FRAME_W - 480) // 2


def camera_frame() -> np.ndarray:
    """One RGB frame of the fake camera: a real photograph with one face, as a webcam would see it."""
    frame = np.full((FRAME_H, FRAME_W, 3), 90, np.uint8)
    frame[:, _OFFSET_X : _OFFSET_X + 480] = cv2.resize(astronaut().image, (480, 480), interpolation=cv2.INTER_AREA)
    return frame


def face_in_camera_frame() -> tuple[float, float, float, float]:
    x, y, w, h = ASTRONAUT_FACE
    return (_OFFSET_X + x * _SCALE, y * _SCALE, w * _SCALE, h * _SCALE)


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 10, fps: int = 15) -> Path:
    """Write an uncompressed 4:2:0 YUV4MPEG2 video (the format Chromium's fake camera reads) of ``rgb``.

    The format: one header line, then per frame ``FRAME\\n`` and the Y, U and V planes (U, V at half size)."""
    height, width = rgb.shape[:2]
    planes = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes()  # Y plane, then U, then V
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n")
            out.write(planes)
    return path


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", camera_frame())


# Session scope in every module that uses it: the process is shared (tests/live_service.py) and stops at the end.
@pytest.fixture(scope="session")
def service(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service with an API key configured, so the page's key handling is exercised too."""
    with running_service(exported_model, tmp_path_factory.mktemp("service-logs"), API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def labels(exported_model: Path) -> list[str]:
    return model_labels(exported_model)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def launch(playwright: Any, profile: Path, camera: Path | None, allow_camera: bool = True) -> Any:
    """A fresh Chromium (new profile) whose fake camera plays ``camera``; ``allow_camera=False`` refuses it."""
    args = list(CHROMIUM_FLAGS)
    if camera is not None:
        args += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}"]
    args += ["--use-fake-ui-for-media-stream"] if allow_camera else ["--deny-permission-prompts"]
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=args, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def browser(playwright: Any, fake_camera: Path, tmp_path: Path) -> Iterator[Any]:
    context = launch(playwright, tmp_path / "profile", fake_camera)
    yield context
    context.close()


def open_page(context: Any, url: str, api_key: str | None = API_KEY) -> Any:
    page = context.pages[0] if context.pages else context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.page_errors = errors  # checked by the tests: the page's script must not throw
    page.goto(url + "/")
    if api_key is not None:
        page.fill("#api-key", api_key)
        page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#service-status[data-state=ok]")
    return page


def box_iou_in_picture(
    page: Any,
    box_selector: str,
    picture_selector: str,
    frame_w: float,
    frame_h: float,
    expected: tuple[float, float, float, float],
    mirrored: bool,
) -> float:
    """IoU between the drawn box (on screen, mapped back to frame pixels) and where the face really is."""
    for _ in range(100):  # the live overlay is redrawn on every reply: a box can be replaced while it is measured
        box = page.locator(box_selector).first.bounding_box()
        picture = page.locator(picture_selector).bounding_box()
        if box is not None and picture is not None:
            break
        page.wait_for_timeout(20)
    assert box is not None and picture is not None, f"{box_selector} is not on the page"
    sx, sy = frame_w / picture["width"], frame_h / picture["height"]
    x = (box["x"] - picture["x"]) * sx
    drawn = (
        (frame_w - x - box["width"] * sx) if mirrored else x,
        (box["y"] - picture["y"]) * sy,
        box["width"] * sx,
        box["height"] * sy,
    )
    return iou(tuple(round(v) for v in drawn), tuple(round(v) for v in expected))


def frames_answered(page: Any) -> int:
    return int(page.text_content("#frames") or 0)


def test_webcam_frames_flow_and_faces_are_drawn(service: ServiceProcess, browser: Any, labels: list[str]) -> None:
    page = open_page(browser, service.url)
    assert page.text_content("h1") == "Facial expression recognition"
    page.click("#start")

    # frames go through the real service: replies keep arriving
    page.wait_for_function("Number(document.querySelector('#frames').textContent) >= 3")
    assert page.text_content("#ws-state") == "open"

    # a box with the top emotion is drawn over the live video, where the face is
    label = page.locator("#live-overlay .face-box .face-label").first
    label.wait_for()
    match = re.fullmatch(r"1: (\w+) (\d+)%", label.text_content() or "")
    assert match and match.group(1) in labels, label.text_content()
    assert page.locator("#live-overlay .face-box").count() == 1
    assert (
        box_iou_in_picture(
            page, "#live-overlay .face-box", "#video", FRAME_W, FRAME_H, face_in_camera_frame(), mirrored=True
        )
        > 0.4
    )

    # one probability bar per label, the top one marked, and the card agrees with the box
    card = page.locator("#live-faces .face-card").first
    assert card.locator(".bar-row").count() == len(labels)
    assert [row.get_attribute("data-label") for row in card.locator(".bar-row").all()] == labels
    assert card.get_attribute("data-emotion") in labels
    assert card.locator(".bar-row.top").get_attribute("data-label") == card.get_attribute("data-emotion")

    # latency and frames/s are measured; one frame in flight at a time means the server never drops one
    assert re.fullmatch(r"\d+", page.text_content("#latency") or "")
    page.wait_for_function("/^\\d+(\\.\\d)?$/.test(document.querySelector('#fps').textContent)")
    assert page.text_content("#dropped") == "0"
    assert page.text_content("#model-info").startswith("model ")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webpage-webcam.png"), full_page=True)

    page.click("#stop")
    assert page.text_content("#ws-state") == "idle"
    assert page.locator("#live-overlay .face-box").count() == 0
    assert page.page_errors == []


def test_upload_draws_faces_on_the_still_image(
    service: ServiceProcess, browser: Any, labels: list[str], tmp_path: Path
) -> None:
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut().image, cv2.COLOR_RGB2BGR))
    empty = tmp_path / "coffee.png"
    cv2.imwrite(str(empty), cv2.cvtColor(no_face().image, cv2.COLOR_RGB2BGR))

    page = open_page(browser, service.url)
    page.click("#tab-upload")
    page.set_input_files("#file", str(photo))
    label = page.locator("#still-overlay .face-box .face-label").first
    label.wait_for()
    match = re.fullmatch(r"1: (\w+) (\d+)%", label.text_content() or "")
    assert match and match.group(1) in labels, label.text_content()
    assert (
        box_iou_in_picture(page, "#still-overlay .face-box", "#still", 512, 512, ASTRONAUT_FACE, mirrored=False) > 0.5
    )
    card = page.locator("#still-faces .face-card").first
    assert card.locator(".bar-row").count() == len(labels)
    assert "512×512" in (page.text_content("#upload-timing") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webpage-upload.png"), full_page=True)

    # a photograph without a face: no box, and the page says so
    page.evaluate("document.querySelector('#still-stage').dataset.done = ''")
    page.set_input_files("#file", str(empty))
    page.wait_for_selector("#still-stage[data-done=true]")
    assert page.locator("#still-overlay .face-box").count() == 0
    assert page.text_content("#still-faces") == "No face found."
    assert page.page_errors == []


def test_api_key_refused_then_accepted_and_remembered(service: ServiceProcess, browser: Any) -> None:
    page = open_page(browser, service.url, api_key=None)  # /readyz needs no key; the stream and /predict do

    # no key: the stream is refused with a message naming the key, and the page does not hammer the service
    page.click("#start")
    page.wait_for_selector("#ws-state[data-state=refused]")
    assert "API key" in page.text_content("#message [data-source=socket]")
    assert frames_answered(page) == 0

    # an upload without a key is refused too, with the service's reason
    page.click("#tab-upload")
    page.set_input_files(
        "#file",
        files=[
            {"name": "a.jpg", "mimeType": "image/jpeg", "buffer": cv2.imencode(".jpg", astronaut().image)[1].tobytes()}
        ],
    )
    page.wait_for_selector("#message [data-source=upload]")
    assert "API key" in page.text_content("#message [data-source=upload]")

    # the right key: the stream reconnects by itself and frames flow
    page.click("#tab-webcam")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("Number(document.querySelector('#frames').textContent) >= 2")
    assert page.locator("#message [data-source=socket]").count() == 0

    # the key is kept in localStorage: a reload fills the field again
    page.reload()
    assert page.input_value("#api-key") == API_KEY
    assert page.page_errors == []


def test_camera_refused_is_explained(
    service: ServiceProcess, playwright: Any, fake_camera: Path, tmp_path: Path
) -> None:
    context = launch(playwright, tmp_path / "profile", fake_camera, allow_camera=False)
    try:
        page = open_page(context, service.url)
        page.click("#start")
        message = page.locator("#message [data-source=camera]")
        message.wait_for()
        assert "Camera access was refused" in message.text_content()
        assert page.is_enabled("#start") and not page.is_enabled("#stop")
        assert page.text_content("#ws-state") == "idle"
    finally:
        context.close()


def test_not_ready_service_is_waited_for(service: ServiceProcess, browser: Any) -> None:
    """While /readyz answers 503 (here: the service's own not-ready body, replayed by the browser's router) the
    page says the service is starting and keeps polling; once it is ready the stream starts by itself."""
    page = browser.pages[0] if browser.pages else browser.new_page()
    not_ready = {"error": {"code": "not_ready", "message": "the model is still loading"}}
    page.route("**/readyz", lambda route: route.fulfill(status=503, json=not_ready, headers={"Retry-After": "1"}))
    page.goto(service.url + "/")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#service-status[data-state=wait]")
    assert "not ready yet" in page.text_content("#message [data-source=ready]")
    page.click("#start")
    page.wait_for_selector("#ws-state[data-state='waiting for service']")
    assert frames_answered(page) == 0
    page.unroute("**/readyz")  # the real /readyz from now on
    page.wait_for_selector("#service-status[data-state=ok]")
    page.wait_for_function("Number(document.querySelector('#frames').textContent) >= 1")
    assert page.locator("#message [data-source=ready]").count() == 0


def test_stream_survives_a_service_restart(
    exported_model: Path, playwright: Any, fake_camera: Path, tmp_path: Path
) -> None:
    """A real drop: the service process is stopped under the streaming page and started again on the same port.
    The page reports the drop and the service's absence, reconnects with backoff, and frames flow again."""
    service = new_service(exported_model, tmp_path)  # its own process: this test stops it
    context = None
    try:
        service.start()
        context = launch(playwright, tmp_path / "profile", fake_camera)
        page = open_page(context, service.url, api_key=None)
        # every message the page shows is recorded, so transient ones can be checked afterwards
        page.evaluate("""() => {
            window.seenMessages = [];
            const box = document.querySelector('#message');
            new MutationObserver(() => { if (box.textContent) window.seenMessages.push(box.textContent); })
                .observe(box, {childList: true, subtree: true, characterData: true});
        }""")
        page.click("#start")
        page.wait_for_function("Number(document.querySelector('#frames').textContent) >= 2")

        service.stop()
        page.wait_for_selector("#ws-state[data-state=reconnecting], #ws-state[data-state='waiting for service']")
        before = frames_answered(page)
        service.start()
        page.wait_for_function(f"Number(document.querySelector('#frames').textContent) >= {before + 2}")
        assert page.text_content("#ws-state") == "open"
        assert page.locator("#message [data-source=socket]").count() == 0

        seen = " | ".join(page.evaluate("window.seenMessages"))
        assert "Reconnecting in" in seen
        assert "Cannot reach the service" in seen or "not ready yet" in seen
        assert page.page_errors == []
    finally:
        if context is not None:
            context.close()
        service.stop()


def heatmap_painted(page: Any, selector: str) -> bool:
    """Whether the first drawn heatmap canvas under ``selector`` has visible (non-transparent) pixels."""
    return bool(
        page.evaluate(
            """(selector) => {
                const canvas = document.querySelector(selector);
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
                return false;
            }""",
            selector,
        )
    )


def test_explain_overlays_a_heatmap_on_each_face(service: ServiceProcess, browser: Any, tmp_path: Path) -> None:
    """The Explain toggle: the map of each face is laid over it, in upload mode and on the live video."""
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut().image, cv2.COLOR_RGB2BGR))
    page = open_page(browser, service.url)
    page.check("#explain")

    page.click("#tab-upload")
    page.set_input_files("#file", str(photo))
    drawn = "#still-overlay .heatmap[data-drawn=true]"
    page.wait_for_selector(drawn)
    assert page.locator("#still-overlay .heatmap").count() == 1
    assert heatmap_painted(page, drawn)
    # the map covers the crop the model saw: around the face, about 1.4 times its side (margin 0.2)
    assert box_iou_in_picture(page, drawn, "#still", 512, 512, ASTRONAUT_FACE, mirrored=False) > 0.3
    label = page.locator(drawn).get_attribute("data-label")
    assert label == page.locator("#still-faces .face-card").first.get_attribute("data-emotion")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webpage-explain-upload.png"), full_page=True)

    # toggled off: the same image is analysed again, without maps
    page.evaluate("document.querySelector('#still-stage').dataset.done = ''")
    page.uncheck("#explain")
    page.wait_for_selector("#still-stage[data-done=true]")
    assert page.locator("#still-overlay .heatmap").count() == 0
    assert page.locator("#still-overlay .face-box").count() == 1

    # live video: the option travels over the stream; the map follows the mirrored picture
    page.check("#explain")
    page.click("#tab-webcam")
    page.click("#start")
    live = "#live-overlay .heatmap[data-drawn=true]"
    page.wait_for_selector(live)
    assert heatmap_painted(page, live)
    assert box_iou_in_picture(page, live, "#video", FRAME_W, FRAME_H, face_in_camera_frame(), mirrored=True) > 0.3
    page.screenshot(path=str(ARTIFACTS / "webpage-explain-webcam.png"), full_page=True)
    page.uncheck("#explain")  # off again: frames come back without maps
    page.wait_for_function("document.querySelectorAll('#live-overlay .heatmap').length === 0")
    page.click("#stop")
    assert page.page_errors == []


def test_face_tracks_show_the_track_id_smoothed_label_and_a_sparkline(
    service: ServiceProcess, browser: Any, labels: list[str]
) -> None:
    page = open_page(browser, service.url)
    assert page.input_value("#smoothing") == "1"  # the page smooths (1 s half-life); the service's default is raw
    page.click("#start")
    page.wait_for_function("Number(document.querySelector('#frames').textContent) >= 3")

    # the live box carries its track id and the track's smoothed label; one person in view: track 1 all along
    tag = page.locator("#live-overlay .face-box .face-track").first
    tag.wait_for()
    match = re.fullmatch(r"#(\d+) · (\w+)", tag.text_content() or "")
    assert match and match.group(1) == "1" and match.group(2) in labels, tag.text_content()
    assert page.locator("#live-overlay .face-box").first.get_attribute("data-track-id") == "1"

    # the track list: one row with the smoothed label and a sparkline that has something drawn on it
    row = page.locator("#tracks .track-row[data-track-id='1']")
    row.wait_for()
    assert page.locator("#tracks .track-row").count() == 1 and page.is_visible("#tracks")
    assert (row.locator(".track-label").text_content() or "").split()[0] in labels
    page.wait_for_function(
        """() => {
            const c = document.querySelector("#tracks .track-row[data-track-id='1'] canvas");
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 3; i < px.length; i += 4) if (px[i] > 0) return true;
            return false;
        }"""
    )
    legend = [item.text_content() for item in row.locator(".track-legend span").all()]
    assert 1 <= len(legend) <= 3 and set(legend) <= set(labels)

    # changing the smoothing is an options message; frames keep flowing and the id stays
    before = frames_answered(page)
    page.select_option("#smoothing", "0")
    page.wait_for_function(f"Number(document.querySelector('#frames').textContent) >= {before + 2}")
    assert page.locator("#live-overlay .face-box .face-track").first.get_attribute("data-track-id") == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webpage-tracks.png"), full_page=True)
    page.click("#stop")
    assert page.page_errors == []
