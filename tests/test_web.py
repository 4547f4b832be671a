"""The exported model in a web page (pytorch2onnx.py --web: utils/export/web.py and the page in web/), run in a real
browser: the folder is served on 127.0.0.1, headless Chromium opens it (driven through the Chrome DevTools Protocol
over a small standard-library websocket client), ../shared/images go in through the page's own file input, and the
page's detections must be PyTorch's (tinydet.load with the torch backend, as test.py runs it): same classes, boxes
within 1 px, scores within 0.01, for the released Yolo-FastestV2 weights and for LeYOLO-Nano, before and after the
sliders move. The webcam runs on Chromium's synthetic camera. A screenshot of the page with its drawn boxes is
saved; the test prints where.

Skipped with the reason when Chromium is not installed (`make web-test` installs Debian's chromium), when ../shared
is absent, or when npm is absent and onnxruntime-web is not cached yet.
"""
import base64
import functools
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, shared_path

import tinydet
from utils.config import load_config
from utils.data.dataset import read_image
from utils.errors import ConfigError, ExportError
from utils.export import web

IMAGES = ('images/bus.jpg', 'images/zidane.jpg')
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 0.01
WAIT_S = 90          # for the page to load its model, or to run the images, on a busy machine
LEYOLO_NANO_DATA = """[model-configure]
model=leyolo-nano
head=leyolo
classes=80
width=320
height=320
letterbox=1

[data-configure]
train=images
val=images
names={names}
"""


# ------------------------------------------------------------------------------------------- the browser, driven

class WebSocket:
    """The client side of RFC 6455, as much as the DevTools Protocol needs: text frames out, messages in."""

    def __init__(self, url: str, timeout_s: float = WAIT_S):
        host_port, _, path = url.removeprefix('ws://').partition('/')
        host, port = host_port.rsplit(':', 1)
        self.socket = socket.create_connection((host, int(port)), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(f'GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n'
                            f'Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n'
                            .encode())
        self.pending = b''
        while b'\r\n\r\n' not in self.pending:
            self.pending += self.read_some()
        head, _, self.pending = self.pending.partition(b'\r\n\r\n')
        if head.split(b' ', 2)[1] != b'101':
            raise ConnectionError(f'{url}: the websocket handshake failed: {head.decode(errors="replace")}')

    def read_some(self) -> bytes:
        chunk = self.socket.recv(1 << 20)
        if not chunk:
            raise ConnectionError('the browser closed the DevTools connection')
        return chunk

    def read(self, size: int) -> bytes:
        while len(self.pending) < size:
            self.pending += self.read_some()
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def send(self, text: str) -> None:
        payload = text.encode()
        size = len(payload)
        # FIN + text frame; a client masks what it sends (with 126/127 announcing a 16/64-bit length)
        if size < 126:
            header = struct.pack('>BB', 0x81, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack('>BBH', 0x81, 0x80 | 126, size)
        else:
            header = struct.pack('>BBQ', 0x81, 0x80 | 127, size)
        mask = os.urandom(4)
        self.socket.sendall(header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload)))

    def receive(self) -> str:
        message = b''
        while True:
            first, second = self.read(2)
            size = second & 0x7f
            if size == 126:
                size = struct.unpack('>H', self.read(2))[0]
            elif size == 127:
                size = struct.unpack('>Q', self.read(8))[0]
            payload = self.read(size)
            opcode = first & 0x0f
            if opcode == 8:
                raise ConnectionError('the browser closed the DevTools connection')
            if opcode in (9, 10):   # ping, pong
                continue
            message += payload
            if first & 0x80:        # the last frame of the message
                return message.decode()


class DevTools:
    """Commands to one page over the Chrome DevTools Protocol; the events that arrive meanwhile are kept."""

    def __init__(self, websocket_url: str):
        self.websocket = WebSocket(websocket_url)
        self.last_id = 0
        self.events = []

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        self.websocket.send(json.dumps({'id': self.last_id, 'method': method, 'params': params}))
        while True:
            message = json.loads(self.websocket.receive())
            if message.get('id') == self.last_id:
                if 'error' in message:
                    raise RuntimeError(f'{method}: {message["error"]}')
                return message['result']
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call('Runtime.evaluate', expression=expression, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in result:
            raise RuntimeError(f'{expression}: {result["exceptionDetails"]}')
        return result['result'].get('value')

    def wait_for(self, expression: str, what: str):
        """Poll `expression` until it gives a truthy value; fail after WAIT_S with what the page logged."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        pytest.fail(f'{what}: not after {WAIT_S} s; the page logged: {self.page_log()}')

    def page_log(self) -> list:
        return [json.dumps(event['params'])[:300] for event in self.events
                if event.get('method') in ('Runtime.exceptionThrown', 'Runtime.consoleAPICalled', 'Log.entryAdded')]

    def requested_urls(self) -> list:
        return [event['params']['request']['url'] for event in self.events
                if event.get('method') == 'Network.requestWillBeSent']


def chromium_executable() -> str:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip('Chromium is not installed (`make web-test` installs it: apt-get install -y chromium)')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """A folder served on 127.0.0.1 (ephemeral port) as python3 -m http.server serves it: (folder, base URL)."""
    folder = tmp_path_factory.mktemp('site')
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_port}'
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    """Headless Chromium with one blank page: a DevTools session on that page."""
    executable = chromium_executable()
    profile = tmp_path_factory.mktemp('chromium-profile')
    # Chromium's synthetic camera stands in for a webcam, allowed without asking
    command = [executable, '--headless', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
               '--no-default-browser-check', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
               f'--user-data-dir={profile}', '--remote-debugging-port=0', '--window-size=1200,1600', 'about:blank']
    if os.geteuid() == 0:   # Chromium refuses to run as root inside its sandbox
        command.insert(1, '--no-sandbox')
    log = (profile / 'chromium.log').open('w')
    process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        port_file = profile / 'DevToolsActivePort'   # Chromium writes the port it chose here
        deadline = time.monotonic() + WAIT_S
        while not (port_file.is_file() and port_file.read_text().count('\n') >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'Chromium did not start: {(profile / "chromium.log").read_text()[-2000:]}')
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=WAIT_S) as response:
            pages = [target for target in json.load(response) if target['type'] == 'page']
        devtools = DevTools(pages[0]['webSocketDebuggerUrl'])
        for domain in ('Runtime', 'Network', 'Log', 'Page'):
            devtools.call(f'{domain}.enable')
        yield devtools
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# ----------------------------------------------------------------------------------------------------- the models

def released_yolo_fastestv2(folder: Path):
    return load_config(REPO / 'data' / 'coco.data', splits=False), shared_path(
        'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth')


def leyolo_nano(folder: Path):
    data = folder / 'leyolo-nano.data'
    data.write_text(LEYOLO_NANO_DATA.format(names=REPO / 'data' / 'coco.names'))
    return load_config(data, splits=False), shared_path('weights/leyolo/LeYOLONano.pt')


MODELS = {'yolo-fastestv2': released_yolo_fastestv2, 'leyolo-nano': leyolo_nano}


def needs_onnxruntime_web() -> None:
    if not web.onnxruntime_web_cached() and shutil.which('npm') is None:
        pytest.skip(f'npm is not installed and onnxruntime-web@{web.ORT_WEB_VERSION} is not in '
                    f'{web.onnxruntime_web_folder()}')


def as_rows(detections) -> list:
    return [dict(class_name=d.class_name, score=d.score, x1=d.x1, y1=d.y1, x2=d.x2, y2=d.y2) for d in detections]


def assert_same_detections(page: list, reference: list, where: str) -> None:
    assert [d['class_name'] for d in page] == [d['class_name'] for d in reference], \
        f'{where}: page {page}\nPyTorch {reference}'
    for found, wanted in zip(page, reference):
        assert abs(found['score'] - wanted['score']) <= SCORE_TOLERANCE, f'{where}: {found} vs {wanted}'
        assert max(abs(found[k] - wanted[k]) for k in ('x1', 'y1', 'x2', 'y2')) <= BOX_TOLERANCE_PX, \
            f'{where}: {found} vs {wanted}'


def set_slider(browser: DevTools, slider_id: str, value: float) -> None:
    browser.evaluate(f"(() => {{ const slider = document.getElementById('{slider_id}'); slider.value = '{value}'; "
                     f"slider.dispatchEvent(new Event('input')); }})()")


# -------------------------------------------------------------------------------------------------------- the tests

@pytest.mark.parametrize('model_name', MODELS)
def test_the_page_finds_what_pytorch_finds(model_name, browser, site, tmp_path):
    cfg, weights = MODELS[model_name](tmp_path)
    image_paths = [shared_path(image) for image in IMAGES]
    needs_onnxruntime_web()
    folder, base_url = site
    files = tinydet.export(cfg, weights, tmp_path / 'model.onnx', check=False, web=folder / model_name,
                           log=lambda *_: None)
    assert sorted(path.name for path in files.web.parent.iterdir()) == sorted(
        web.PAGE_FILES + web.ORT_WEB_FILES + ('model.onnx', 'model.json'))

    browser.events.clear()
    browser.call('Page.navigate', url=f'{base_url}/{model_name}/index.html')
    state = browser.wait_for(f"location.pathname === '/{model_name}/index.html' && window.tinydet && "
                             f"(tinydet.ready || tinydet.error) && {{ready: tinydet.ready, error: tinydet.error}}",
                             'the page loading its model')
    assert state == {'ready': True, 'error': None}, state
    document = browser.call('DOM.getDocument')
    file_input = browser.call('DOM.querySelector', nodeId=document['root']['nodeId'], selector='#file-input')
    browser.call('DOM.setFileInputFiles', nodeId=file_input['nodeId'], files=[str(path) for path in image_paths])
    browser.wait_for(f'tinydet.error || tinydet.results.length === {len(image_paths)}', 'the page running the images')
    page = browser.evaluate('tinydet')
    assert page['error'] is None, page['error']
    assert page['runs'] == len(image_paths)
    screenshot = tmp_path / f'web-{model_name}.png'
    screenshot.write_bytes(base64.b64decode(browser.call('Page.captureScreenshot', format='png',
                                                         captureBeyondViewport=True)['data']))
    print(f'screenshot of the page: {screenshot}')

    # nothing but the served folder: the model, its sidecar and onnxruntime-web all come from there
    outside = [url for url in browser.requested_urls() if not url.startswith(base_url)]
    assert not outside, outside

    detector = tinydet.load(weights, data=cfg, backend='torch')
    images = [read_image(path) for path in image_paths]
    assert (page['conf'], page['iou']) == (detector.conf, detector.iou)   # the sidecar's, the Detector's defaults
    for result, path, image in zip(page['results'], image_paths, images):
        assert result['name'] == path.name and (result['width'], result['height']) == image.shape[1::-1]
        reference = as_rows(detector(image))
        assert reference, f'{path.name}: PyTorch finds nothing, so the comparison would prove little'
        assert_same_detections(result['detections'], reference, f'{model_name} {path.name}')

    # the sliders filter the boxes of the last run again: no new run, PyTorch's detections at the new settings
    found_at_defaults = sum(len(result['detections']) for result in page['results'])
    detector.conf, detector.iou = 0.1, 0.6
    set_slider(browser, 'conf-slider', detector.conf)
    set_slider(browser, 'iou-slider', detector.iou)
    page = browser.evaluate('tinydet')
    assert page['runs'] == len(image_paths) and (page['conf'], page['iou']) == (0.1, 0.6)
    for result, path, image in zip(page['results'], image_paths, images):
        assert_same_detections(result['detections'], as_rows(detector(image)),
                               f'{model_name} {path.name} at conf 0.1, IoU 0.6')
    assert sum(len(result['detections']) for result in page['results']) > found_at_defaults

    # the webcam runs frame after frame until it is stopped
    browser.evaluate("document.getElementById('webcam-button').click()")
    browser.wait_for(f'tinydet.error || tinydet.runs >= {len(image_paths) + 3}', 'three webcam frames')
    browser.evaluate("document.getElementById('webcam-button').click()")
    page = browser.evaluate('tinydet')
    assert page['error'] is None, page['error']
    assert 'inference' in browser.evaluate("document.getElementById('webcam-timing').textContent")
    time.sleep(0.5)
    assert browser.evaluate('tinydet.runs') <= page['runs'] + 1   # a frame already running may finish


def test_web_needs_the_ncnn_sidecar(tmp_path):
    with pytest.raises(ConfigError, match='--web .* cannot go with --no-ncnn'):
        tinydet.export(REPO / 'data' / 'coco.data', tmp_path / 'weights.pth', ncnn=False, web=tmp_path / 'page')


def test_a_missing_npm_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(web.shutil, 'which', lambda name: None)
    with pytest.raises(ExportError, match=r'npm is not installed \(Debian: apt-get install -y npm\)'):
        web.onnxruntime_web_files(cache=tmp_path)
    assert not any(tmp_path.iterdir())
