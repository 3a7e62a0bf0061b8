// Demo page of the facial-expression service: webcam frames over /ws/stream, still images over /predict.
// Plain browser JavaScript, no build step and no third-party code.
"use strict";

(() => {
  // ---- constants ---------------------------------------------------------------------------------------------
  const KEY_STORAGE = "fer.apiKey";
  const BACKOFF_START_MS = 500;      // first reconnect delay; doubles per failed attempt
  const BACKOFF_MAX_MS = 15000;
  const READY_POLL_START_MS = 1000;  // /readyz polling while the model loads
  const READY_POLL_MAX_MS = 5000;
  const REPLY_TIMEOUT_MS = 10000;    // a frame without a reply after this long is given up (so the loop never stalls)
  const SEND_MAX_WIDTH = 640;        // frames are downscaled before encoding: faces stay large enough, uploads small
  const JPEG_QUALITY = 0.8;
  const FPS_WINDOW_MS = 2000;

  // Fixed colours for the usual FER labels; any other label gets a colour derived from its name.
  const EMOTION_COLOURS = {
    angry: "#e5484d", disgust: "#46a758", fear: "#8e4ec6", happy: "#f5b400",
    neutral: "#8b8d98", sad: "#3e63dd", surprise: "#f76b15", contempt: "#12a594",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("service-status"), modelInfo: $("model-info"), message: $("message"),
    apiKey: $("api-key"), detect: $("detect"), explain: $("explain"),
    tabWebcam: $("tab-webcam"), tabUpload: $("tab-upload"),
    panelWebcam: $("panel-webcam"), panelUpload: $("panel-upload"),
    start: $("start"), stop: $("stop"), fpsCap: $("fps-cap"), fpsCapValue: $("fps-cap-value"), mirror: $("mirror"),
    wsState: $("ws-state"), latency: $("latency"), fps: $("fps"), dropped: $("dropped"), frames: $("frames"),
    serverMs: $("server-ms"),
    liveStage: $("live-stage"), video: $("video"), liveOverlay: $("live-overlay"),
    livePlaceholder: $("live-placeholder"), liveFaces: $("live-faces"),
    file: $("file"), uploadTiming: $("upload-timing"), stillStage: $("still-stage"), still: $("still"),
    stillOverlay: $("still-overlay"), stillPlaceholder: $("still-placeholder"), stillFaces: $("still-faces"),
    grab: $("grab"),
  };

  // ---- small helpers -----------------------------------------------------------------------------------------
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const pct = (p) => `${Math.round(p * 100)}%`;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function colourFor(label) {
    if (EMOTION_COLOURS[label]) return EMOTION_COLOURS[label];
    let hash = 0;
    for (const ch of label) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    return `hsl(${hash % 360} 70% 50%)`;
  }

  // URLs relative to the page, so the page also works when the service sits behind a path prefix.
  const pageBase = new URL(".", location.href);
  const httpUrl = (path) => new URL(path, pageBase);

  function apiKey() {
    return ui.apiKey.value.trim();
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // Browsers cannot set headers on a WebSocket, so the key travels as the `api_key` query parameter.
  function streamUrl() {
    const url = httpUrl("ws/stream");
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey();
    if (key) url.searchParams.set("api_key", key);
    return url.href;
  }

  // ---- messages: one slot per source, so a camera problem does not hide a socket problem -------------------
  const messages = new Map();

  function setMessage(source, text, level = "error") {
    if (text) messages.set(source, { text, level });
    else messages.delete(source);
    ui.message.replaceChildren();
    for (const [key, { text: line, level: lvl }] of messages) {
      const p = el("p", `msg msg-${lvl}`, line);
      p.dataset.source = key;
      ui.message.append(p);
    }
    ui.message.hidden = messages.size === 0;
  }

  function setStatus(kind, text) {
    ui.status.className = `pill pill-${kind}`;
    ui.status.textContent = text;
    ui.status.dataset.state = kind;
  }

  function errorText(status, body) {
    const detail = body && body.error ? body.error.message : "";
    if (status === 401 || status === 403) {
      return `The service refused the API key${detail ? ` (${detail})` : ""}. Enter a valid key in the API key field.`;
    }
    if (status === 503) return `The service is not ready or is overloaded${detail ? `: ${detail}` : ""}. Try again shortly.`;
    if (status === 413) return `The image is too large for the service${detail ? `: ${detail}` : ""}.`;
    return `The service answered ${status}${detail ? `: ${detail}` : ""}.`;
  }

  // ---- readiness ---------------------------------------------------------------------------------------------
  let ready = false;
  let readyWaiter = null;

  async function checkReady() {
    try {
      const response = await fetch(httpUrl("readyz"), { cache: "no-store" });
      if (response.ok) {
        ready = true;
        setStatus("ok", "Service ready");
        setMessage("ready", null);
        return true;
      }
      ready = false;
      let body = null;
      try { body = await response.json(); } catch { /* not JSON: keep the status only */ }
      const detail = body && body.error ? `: ${body.error.message}` : "";
      setStatus("wait", "Service starting…");
      setMessage("ready", `The service is not ready yet (HTTP ${response.status}${detail}); `
        + "it is probably still loading the model. Waiting for it…", "warn");
    } catch {
      ready = false;
      setStatus("down", "Service unreachable");
      setMessage("ready", "Cannot reach the service. Is it running? Retrying…", "error");
    }
    return false;
  }

  // Polls /readyz until it answers 200; concurrent callers share one poll loop.
  function waitUntilReady() {
    if (!readyWaiter) {
      readyWaiter = (async () => {
        let delay = READY_POLL_START_MS;
        while (!(await checkReady())) {
          await sleep(delay);
          delay = Math.min(delay * 1.5, READY_POLL_MAX_MS);
        }
      })().finally(() => { readyWaiter = null; });
    }
    return readyWaiter;
  }

  // A socket that never opens while /readyz is fine is most often a rejected API key (browsers do not expose the
  // handshake's HTTP status). An empty POST /predict tells: auth is checked before the body.
  async function probeAuthRejected() {
    try {
      const response = await fetch(httpUrl("predict"), { method: "POST", headers: authHeaders(), body: "" });
      return response.status === 401 || response.status === 403;
    } catch {
      return false;
    }
  }

  // ---- drawing results ---------------------------------------------------------------------------------------
  // Colour map of an explanation (value 0..1): blue -> green -> yellow -> red, transparent where there is nothing.
  function heatColour(v) {
    const ramp = (centre) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - centre))));
    return [ramp(3), ramp(2), ramp(1), Math.round(255 * Math.min(1, v * 1.5))];
  }

  // The face's Grad-CAM map (a grayscale PNG) as a colour canvas stretched over the crop the model saw.
  function heatmapCanvas(explanation, W, H, mirrored) {
    const b = explanation.box;
    const canvas = el("canvas", mirrored ? "heatmap flipped" : "heatmap");
    canvas.width = explanation.width;
    canvas.height = explanation.height;
    canvas.style.left = `${(100 * (mirrored ? W - b.x - b.width : b.x)) / W}%`;
    canvas.style.top = `${(100 * b.y) / H}%`;
    canvas.style.width = `${(100 * b.width) / W}%`;
    canvas.style.height = `${(100 * b.height) / H}%`;
    canvas.dataset.label = explanation.label;
    canvas.title = `where the network saw “${explanation.label}”`;
    const img = new Image();
    img.addEventListener("load", () => {
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const data = pixels.data;
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, bl, a] = heatColour(data[i] / 255);
        data[i] = r; data[i + 1] = g; data[i + 2] = bl; data[i + 3] = a;
      }
      ctx.putImageData(pixels, 0, 0);
      canvas.dataset.drawn = "true";
    });
    img.src = `data:image/png;base64,${explanation.png}`;
    return canvas;
  }

  function renderOverlay(overlay, result, mirrored) {
    overlay.replaceChildren();
    const { width: W, height: H } = result.image;
    result.faces.forEach((face) => {  // maps first: the boxes and labels stay on top
      if (face.explanation) overlay.append(heatmapCanvas(face.explanation, W, H, mirrored));
    });
    result.faces.forEach((face, i) => {
      const b = face.box;
      // The mirrored video is flipped by CSS; the boxes are placed flipped here so their labels stay readable.
      const left = mirrored ? W - b.x - b.width : b.x;
      const box = el("div", "face-box");
      box.style.left = `${(100 * left) / W}%`;
      box.style.top = `${(100 * b.y) / H}%`;
      box.style.width = `${(100 * b.width) / W}%`;
      box.style.height = `${(100 * b.height) / H}%`;
      box.style.borderColor = colourFor(face.emotion);
      box.dataset.emotion = face.emotion;
      const label = el("span", "face-label", `${i + 1}: ${face.emotion} ${pct(face.confidence)}`);
      label.style.background = colourFor(face.emotion);
      if (b.y / H < 0.08) box.classList.add("label-inside");  // no room above a face at the top edge
      box.append(label);
      overlay.append(box);
    });
  }

  function renderFaces(container, result) {
    container.replaceChildren();
    if (result.faces.length === 0) {
      container.append(el("p", "no-face muted", "No face found."));
      return;
    }
    result.faces.forEach((face, i) => {
      const card = el("article", "face-card");
      card.dataset.emotion = face.emotion;
      const title = el("h3");
      title.append(el("span", "face-index", `Face ${i + 1}`), " ",
        el("span", "emotion", face.emotion), " ", el("span", "confidence", pct(face.confidence)));
      title.querySelector(".emotion").style.color = colourFor(face.emotion);
      card.append(title);
      const bars = el("div", "bars");
      for (const [label, p] of Object.entries(face.probabilities)) {
        const row = el("div", label === face.emotion ? "bar-row top" : "bar-row");
        row.dataset.label = label;
        const track = el("span", "bar");
        const fill = el("span", "bar-fill");
        fill.style.width = `${(100 * p).toFixed(1)}%`;
        fill.style.background = colourFor(label);
        track.append(fill);
        row.append(el("span", "bar-label", label), track, el("span", "bar-value", pct(p)));
        bars.append(row);
      }
      card.append(bars);
      container.append(card);
    });
  }

  function showModel(result) {
    if (result.model) ui.modelInfo.textContent = `model ${result.model.name} v${result.model.version}`;
  }

  // ---- webcam + stream ---------------------------------------------------------------------------------------
  const live = {
    running: false,
    stream: null,
    ws: null,
    attempt: 0,            // failed connection attempts since the last good reply: drives the backoff
    reconnectTimer: null,
    refusal: null,         // the service's last connection-level error message ({code, message}), if any
    sendTimer: null,
    capturing: false,      // a frame is being encoded
    inFlight: null,        // {seq, sentAt} of the frame awaiting its reply: at most one at a time
    sent: 0,               // frames sent on the current connection (the server numbers them the same way)
    lastSentAt: -Infinity,
    replyTimes: [],
    answered: 0,
    droppedBefore: 0,      // frames the server dropped on earlier connections
    droppedNow: 0,
    timedOut: 0,
  };

  function cameraErrorText(error) {
    switch (error && error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Camera access was refused. Allow the camera for this site in the browser's settings, then press "
          + "“Start camera” again. (Image upload works without a camera.)";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No camera was found. Connect one, or use the image upload.";
      case "NotReadableError":
        return "The camera is in use by another program or could not be started.";
      default:
        return `The camera could not be started: ${error && error.message ? error.message : error}`;
    }
  }

  function setWsState(text) {
    ui.wsState.textContent = text;
    ui.wsState.dataset.state = text;
  }

  async function startCamera() {
    setMessage("camera", null);
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setMessage("camera", "This browser offers no camera to this page: open it over https:// or from localhost.");
      return;
    }
    ui.start.disabled = true;
    try {
      live.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
      });
    } catch (error) {
      setMessage("camera", cameraErrorText(error));
      ui.start.disabled = false;
      return;
    }
    ui.video.srcObject = live.stream;
    try { await ui.video.play(); } catch { /* autoplay of a muted stream is allowed; play() may still reject */ }
    live.running = true;
    ui.stop.disabled = false;
    ui.livePlaceholder.hidden = true;
    live.stream.getVideoTracks().forEach((track) => {
      track.addEventListener("ended", () => {
        setMessage("camera", "The camera stopped (unplugged or taken by another program).");
        stopCamera();
      });
    });
    live.attempt = 0;
    connect();
  }

  function stopCamera() {
    live.running = false;
    clearTimeout(live.reconnectTimer);
    clearTimeout(live.sendTimer);
    closeSocket();
    if (live.stream) live.stream.getTracks().forEach((track) => track.stop());
    live.stream = null;
    ui.video.srcObject = null;
    ui.liveOverlay.replaceChildren();
    ui.livePlaceholder.hidden = false;
    ui.start.disabled = false;
    ui.stop.disabled = true;
    setWsState("idle");
    setMessage("socket", null);
    setMessage("frame", null);
  }

  function closeSocket() {
    const sock = live.ws;
    live.ws = null;          // detach first: this close is ours and must not trigger a reconnect
    live.inFlight = null;
    live.droppedBefore += live.droppedNow;
    live.droppedNow = 0;
    if (sock && sock.readyState <= WebSocket.OPEN) sock.close(1000, "client closed");
  }

  async function connect() {
    if (!live.running) return;
    setWsState("waiting for service");
    await waitUntilReady();
    if (!live.running || live.ws) return;
    setWsState("connecting");
    const sock = new WebSocket(streamUrl());
    sock.binaryType = "arraybuffer";
    live.ws = sock;
    let opened = false;
    live.refusal = null;
    sock.addEventListener("open", () => {
      if (live.ws !== sock) return;
      opened = true;
      live.sent = 0;
      live.inFlight = null;
      setWsState("open");
      sendOptions();
      scheduleSend(0);
    });
    sock.addEventListener("message", (event) => {
      if (live.ws === sock) onStreamMessage(event);
    });
    sock.addEventListener("close", (event) => {
      if (live.ws !== sock) return;   // a socket we closed ourselves
      closeSocket();
      if (!live.running) return;
      if (event.code === 1008 || (live.refusal && live.refusal.code === "unauthorized")) {
        // Retrying with the same key cannot work: wait for the user to change it (that reconnects).
        const why = live.refusal ? live.refusal.message : (event.reason || "API key missing or wrong");
        setWsState("refused");
        setMessage("socket", `The service refused the stream: ${why}. Enter a valid key in the API key field; `
          + "the stream reconnects when the key changes.");
        return;
      }
      scheduleReconnect(event, opened);
    });
  }

  function closeReason(event, opened) {
    // The service explains a refusal in an error message (seq null) just before closing: prefer its words.
    const said = live.refusal ? live.refusal.message : event.reason;
    const reason = said ? ` (${said})` : "";
    switch (event.code) {
      case 1008: case 4401: case 4403:
        return `The service refused the stream${reason || " (API key missing or wrong?)"}. Check the API key field.`;
      case 1009:
        return `A frame was larger than the service accepts${reason}.`;
      case 1013:
        return `The service is busy (too many connections)${reason}.`;
      case 1001: case 1012:
        return `The service is restarting or shutting down${reason}.`;
      default:
        return opened
          ? `The stream connection dropped (code ${event.code}${reason}).`
          : "Could not open the stream connection.";
    }
  }

  async function scheduleReconnect(event, opened) {
    let text = closeReason(event, opened);
    if (!opened && event.code === 1006 && ready && (await probeAuthRejected())) {
      text = "The service refused the API key. Enter a valid key in the API key field.";
    }
    if (!live.running) return;
    const delay = Math.min(BACKOFF_START_MS * 2 ** live.attempt, BACKOFF_MAX_MS);
    live.attempt += 1;
    ready = false;           // re-check readiness before the next attempt: the service may be restarting
    setWsState("reconnecting");
    setMessage("socket", `${text} Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${live.attempt}).`, "warn");
    clearTimeout(live.reconnectTimer);
    live.reconnectTimer = setTimeout(connect, delay);
  }

  function sendOptions() {
    const sock = live.ws;
    if (sock && sock.readyState === WebSocket.OPEN) {
      sock.send(JSON.stringify({ detect: ui.detect.checked, explain: ui.explain.checked, ...trackOptions() }));
    }
  }

  // The service cannot explain (a model exported before explanations): say so and turn the toggle off.
  function explainRefused(message) {
    ui.explain.checked = false;
    setMessage("explain", `Explanations are not available: ${message}`, "warn");
  }

  function fpsCap() {
    return Math.max(1, Number(ui.fpsCap.value) || 1);
  }

  function scheduleSend(delayMs) {
    clearTimeout(live.sendTimer);
    live.sendTimer = setTimeout(trySend, Math.max(0, delayMs));
  }

  // Sends the current video frame when nothing is in flight and the rate cap allows; otherwise re-arms itself.
  function trySend() {
    const sock = live.ws;
    if (!live.running || !sock || sock.readyState !== WebSocket.OPEN || live.capturing) return;
    const now = performance.now();
    if (live.inFlight) {
      const waited = now - live.inFlight.sentAt;
      if (waited < REPLY_TIMEOUT_MS) { scheduleSend(REPLY_TIMEOUT_MS - waited); return; }
      live.inFlight = null;  // no reply in time: give up on that frame so the stream goes on
      live.timedOut += 1;
      setMessage("frame", `${live.timedOut} frame(s) got no reply within ${REPLY_TIMEOUT_MS / 1000} s.`, "warn");
    }
    const gap = 1000 / fpsCap() - (now - live.lastSentAt);
    if (gap > 0) { scheduleSend(gap); return; }
    const video = ui.video;
    if (video.readyState < 2 || !video.videoWidth) { scheduleSend(50); return; }

    const scale = Math.min(1, SEND_MAX_WIDTH / video.videoWidth);
    const canvas = ui.grab;
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    live.capturing = true;
    canvas.toBlob(async (blob) => {
      try {
        if (!blob || live.ws !== sock || sock.readyState !== WebSocket.OPEN) return;
        const bytes = await blob.arrayBuffer();
        if (live.ws !== sock || sock.readyState !== WebSocket.OPEN) return;
        sock.send(bytes);
        live.sent += 1;
        live.lastSentAt = performance.now();
        live.inFlight = { seq: live.sent, sentAt: live.lastSentAt };
        scheduleSend(REPLY_TIMEOUT_MS);  // watchdog; a reply re-arms sooner
      } finally {
        live.capturing = false;
      }
    }, "image/jpeg", JPEG_QUALITY);
  }

  function onStreamMessage(event) {
    if (typeof event.data !== "string") return;
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    const now = performance.now();
    if (msg.type === "result") {
      if (live.inFlight && msg.seq >= live.inFlight.seq) {
        ui.latency.textContent = Math.round(now - live.inFlight.sentAt);
        live.inFlight = null;
      }
      live.attempt = 0;       // a good reply: the connection works, reset the backoff
      setMessage("socket", null);
      live.answered += 1;
      live.replyTimes.push(now);
      while (live.replyTimes.length && now - live.replyTimes[0] > FPS_WINDOW_MS) live.replyTimes.shift();
      if (live.replyTimes.length >= 2) {
        const span = (live.replyTimes[live.replyTimes.length - 1] - live.replyTimes[0]) / 1000;
        ui.fps.textContent = ((live.replyTimes.length - 1) / span).toFixed(1);
      }
      live.droppedNow = msg.dropped_total || 0;
      ui.dropped.textContent = live.droppedBefore + live.droppedNow;
      ui.frames.textContent = live.answered;
      if (msg.timings_ms) ui.serverMs.textContent = Math.round(msg.timings_ms.total);
      showModel(msg);
      renderOverlay(ui.liveOverlay, msg, ui.mirror.checked);
      renderFaces(ui.liveFaces, msg);
      renderTracks(msg);
    } else if (msg.type === "error" && (msg.seq === null || msg.seq === undefined)) {
      if (msg.code === "explanations_unavailable" || msg.code === "invalid_parameter") {
        explainRefused(msg.message);  // a refused options message: the connection goes on without explanations
        return;
      }
      live.refusal = msg;     // about the connection, not a frame: the close that follows says what to do
      return;
    } else if (msg.type === "error") {
      if (live.inFlight && msg.seq >= live.inFlight.seq) live.inFlight = null;
      setMessage("frame", `Frame ${msg.seq} was refused: ${msg.message} (${msg.code}).`, "warn");
    } else {
      return;                 // "options" acknowledgements need nothing
    }
    scheduleSend(0);          // trySend applies the rate cap
  }

  // ---- face tracks: id and smoothed label on each live box, a sparkline per track ---------------------------
  // The service gives every stream face a track_id and its track's smoothed emotion (options smoothing/hysteresis).
  const TRACK_WINDOW_MS = 30000;     // the sparklines show the last 30 s
  const TRACK_TOP_LABELS = 3;        // lines per sparkline: the labels with the highest mean over the window
  const tracks = { ws: null, byId: new Map() };  // id -> {row, canvas, text, history: [{t, p}], lastSeen}

  function trackOptions() {
    const smoothing = Number(document.getElementById("smoothing").value) || 0;
    return { smoothing, hysteresis: smoothing > 0 ? 0.05 : 0 };
  }

  function clearTracks() {
    tracks.byId.clear();
    document.getElementById("track-list").replaceChildren();
    document.getElementById("tracks").hidden = true;
  }

  function labelTracks(result) {
    const boxes = ui.liveOverlay.querySelectorAll(".face-box");  // drawn by renderOverlay, in the faces' order
    result.faces.forEach((face, i) => {
      if (!boxes[i] || face.track_id === undefined) return;
      const smoothed = face.smoothed || face;
      const tag = el("span", "face-track", `#${face.track_id} · ${smoothed.emotion}`);
      tag.dataset.trackId = face.track_id;
      tag.title = `track ${face.track_id}, smoothed: ${smoothed.emotion} ${pct(smoothed.confidence)}`;
      boxes[i].dataset.trackId = face.track_id;
      boxes[i].append(tag);
    });
  }

  function trackRow(id) {
    const row = el("div", "track-row");
    row.dataset.trackId = id;
    const text = el("span", "track-label");
    const canvas = el("canvas");
    canvas.width = 240;
    canvas.height = 48;
    row.append(el("span", "track-name", `#${id}`), text, canvas, el("div", "track-legend muted"));
    return { row, canvas, text, history: [], lastSeen: 0 };
  }

  function drawSparkline(track, now) {
    const { canvas, history } = track;
    const ctx = canvas.getContext("2d");
    const { width: W, height: H } = canvas;
    ctx.clearRect(0, 0, W, H);
    if (history.length === 0) return;
    const means = new Map();
    for (const { p } of history) for (const [label, v] of Object.entries(p)) means.set(label, (means.get(label) || 0) + v);
    const top = [...means.entries()].sort((a, b) => b[1] - a[1]).slice(0, TRACK_TOP_LABELS).map(([label]) => label);
    const x = (t) => W - ((now - t) / TRACK_WINDOW_MS) * W;
    for (const label of top) {
      ctx.strokeStyle = colourFor(label);
      ctx.lineWidth = 2;
      ctx.beginPath();
      history.forEach(({ t, p }, i) => {
        const y = H - 2 - (p[label] || 0) * (H - 4);
        if (i === 0) ctx.moveTo(x(t), y); else ctx.lineTo(x(t), y);
      });
      ctx.stroke();
    }
    const legend = track.row.querySelector(".track-legend");
    legend.replaceChildren(...top.map((label) => {
      const item = el("span", "", label);
      item.style.color = colourFor(label);
      return item;
    }));
  }

  function renderTracks(result) {
    if (tracks.ws !== live.ws) {        // a new connection numbers its tracks from 1 again
      clearTracks();
      tracks.ws = live.ws;
    }
    labelTracks(result);
    const now = performance.now();
    const list = document.getElementById("track-list");
    for (const face of result.faces) {
      if (face.track_id === undefined) continue;
      let track = tracks.byId.get(face.track_id);
      if (!track) {
        track = trackRow(face.track_id);
        tracks.byId.set(face.track_id, track);
        list.append(track.row);
      }
      const smoothed = face.smoothed || face;
      track.history.push({ t: now, p: smoothed.probabilities });
      track.lastSeen = now;
      track.text.textContent = `${smoothed.emotion} ${pct(smoothed.confidence)}`;
      track.text.style.color = colourFor(smoothed.emotion);
    }
    for (const [id, track] of tracks.byId) {
      while (track.history.length && now - track.history[0].t > TRACK_WINDOW_MS) track.history.shift();
      if (track.history.length === 0) {  // not seen for 30 s: gone from the list
        track.row.remove();
        tracks.byId.delete(id);
        continue;
      }
      track.row.classList.toggle("gone", track.lastSeen !== now);
      drawSparkline(track, now);
    }
    document.getElementById("tracks").hidden = tracks.byId.size === 0;
  }

  document.getElementById("smoothing").addEventListener("change", sendOptions);

  // ---- image upload ------------------------------------------------------------------------------------------
  let stillUrl = null;
  let lastFile = null;       // uploaded again when the Explain toggle changes

  async function upload(file) {
    if (!file) return;
    lastFile = file;
    setMessage("upload", null);
    if (stillUrl) URL.revokeObjectURL(stillUrl);
    stillUrl = URL.createObjectURL(file);
    ui.still.hidden = false;
    ui.still.src = stillUrl;
    ui.stillStage.style.aspectRatio = "";
    ui.stillPlaceholder.hidden = true;
    ui.stillOverlay.replaceChildren();
    ui.stillFaces.replaceChildren(el("p", "muted", "Analysing…"));
    ui.uploadTiming.textContent = "";

    const url = httpUrl("predict");
    url.searchParams.set("detect", ui.detect.checked ? "true" : "false");
    if (ui.explain.checked) url.searchParams.set("explain", "true");
    const form = new FormData();
    form.append("file", file, file.name || "image");
    const started = performance.now();
    let response;
    try {
      response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    } catch {
      ui.stillFaces.replaceChildren();
      setMessage("upload", "Cannot reach the service to analyse the image. Is it running?");
      return;
    }
    let body = null;
    try { body = await response.json(); } catch { /* handled below */ }
    ui.stillFaces.replaceChildren();
    if (!response.ok || !body) {
      if (body && body.error && body.error.code === "explanations_unavailable") {
        explainRefused(body.error.message);
        upload(file);         // once more, without explanations
        return;
      }
      setMessage("upload", errorText(response.status, body));
      if (response.status === 503) waitUntilReady();
      return;
    }
    const rtt = Math.round(performance.now() - started);
    ui.uploadTiming.textContent = `${body.image.width}×${body.image.height}, round trip ${rtt} ms, `
      + `server ${Math.round(body.timings_ms.total)} ms`;
    // A format the browser cannot show (TIFF, 16-bit PNG in some browsers): keep the overlay's shape anyway.
    if (!ui.still.complete || ui.still.naturalWidth === 0) {
      ui.stillStage.style.aspectRatio = `${body.image.width} / ${body.image.height}`;
    }
    showModel(body);
    renderOverlay(ui.stillOverlay, body, false);
    renderFaces(ui.stillFaces, body);
    ui.stillStage.dataset.done = "true";
  }

  // ---- wiring ------------------------------------------------------------------------------------------------
  function selectTab(which) {
    const webcam = which === "webcam";
    ui.tabWebcam.setAttribute("aria-selected", String(webcam));
    ui.tabUpload.setAttribute("aria-selected", String(!webcam));
    ui.panelWebcam.hidden = !webcam;
    ui.panelUpload.hidden = webcam;
  }

  ui.tabWebcam.addEventListener("click", () => selectTab("webcam"));
  ui.tabUpload.addEventListener("click", () => selectTab("upload"));
  ui.start.addEventListener("click", startCamera);
  ui.stop.addEventListener("click", stopCamera);
  ui.fpsCap.addEventListener("input", () => { ui.fpsCapValue.textContent = ui.fpsCap.value; });
  ui.mirror.addEventListener("change", () => {
    ui.liveStage.classList.toggle("mirrored", ui.mirror.checked);
    ui.liveOverlay.replaceChildren();
  });
  ui.detect.addEventListener("change", sendOptions);
  ui.explain.addEventListener("change", () => {
    if (ui.explain.checked) setMessage("explain", null);
    sendOptions();
    if (lastFile && !ui.panelUpload.hidden) upload(lastFile);  // show the uploaded image with / without maps
  });

  ui.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  ui.apiKey.addEventListener("change", () => {
    const key = apiKey();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    if (live.running) {       // the socket carries the key from its handshake: reconnect with the new one
      closeSocket();
      live.attempt = 0;
      clearTimeout(live.reconnectTimer);
      connect();
    }
  });

  ui.file.addEventListener("change", () => upload(ui.file.files[0]));
  ui.stillStage.addEventListener("dragover", (event) => { event.preventDefault(); ui.stillStage.classList.add("over"); });
  ui.stillStage.addEventListener("dragleave", () => ui.stillStage.classList.remove("over"));
  ui.stillStage.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.stillStage.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  ui.still.addEventListener("error", () => {
    if (ui.still.src) ui.still.hidden = true;  // the overlay still shows where the faces are
  });

  waitUntilReady();
})();
