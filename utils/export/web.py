"""The exported model in a web page: a static folder that runs the .onnx in the browser, nothing fetched from outside.

    pytorch2onnx.py ... --web DIR  ->  DIR/index.html, app.js, detect.js, style.css   (the page: web/ in the repo)
                                       DIR/model.onnx, model.json                     (the model and its sidecar)
                                       DIR/ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}   (onnxruntime-web)

onnxruntime-web comes from its npm package at ORT_WEB_VERSION: npm installs it once and its three files are kept in
~/.cache/tinydet/web/ (or $XDG_CACHE_HOME/tinydet/web/), then copied in. Serve the folder with
`python3 -m http.server` (a page opened from file:// may not fetch its model). docs/deployment.md, "In a web page".
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from utils.errors import ExportError

ORT_WEB_VERSION = '1.31.1'
# The WASM-only build of onnxruntime-web and the WebAssembly module it loads (one build for 1 and more threads).
ORT_WEB_FILES = ('ort.wasm.min.js', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm')
PAGE_FOLDER = Path(__file__).resolve().parents[2] / 'web'
PAGE_FILES = ('index.html', 'app.js', 'detect.js', 'style.css')
NPM_TIMEOUT_S = 600


def cache_folder() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'tinydet' / 'web'


def onnxruntime_web_folder(cache: Path | None = None) -> Path:
    """Where ORT_WEB_FILES of onnxruntime-web ORT_WEB_VERSION are kept."""
    return (cache or cache_folder()) / f'onnxruntime-web-{ORT_WEB_VERSION}'


def onnxruntime_web_cached(cache: Path | None = None) -> bool:
    return all((onnxruntime_web_folder(cache) / name).is_file() for name in ORT_WEB_FILES)


def onnxruntime_web_files(cache: Path | None = None) -> Path:
    """The cache folder holding ORT_WEB_FILES of onnxruntime-web ORT_WEB_VERSION. On first use npm installs the
    package into a temporary folder and only these files are kept, so an interrupted install leaves nothing."""
    folder = onnxruntime_web_folder(cache)
    if onnxruntime_web_cached(cache):
        return folder
    npm = shutil.which('npm')
    if npm is None:
        raise ExportError(f'--web needs onnxruntime-web@{ORT_WEB_VERSION} from npm, and npm is not installed '
                          f'(Debian: apt-get install -y npm); it is installed once into {folder}')
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='.npm-', dir=folder.parent))
    try:
        dist = npm_install(npm, work)
        kept = work / 'kept'
        kept.mkdir()
        for name in ORT_WEB_FILES:
            shutil.copyfile(dist / name, kept / name)
        if folder.exists():
            shutil.rmtree(folder)
        kept.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def npm_install(npm: str, prefix: Path) -> Path:
    """npm install onnxruntime-web@ORT_WEB_VERSION into prefix/node_modules; returns the package's dist folder, or
    raises ExportError saying why not."""
    command = [npm, 'install', '--prefix', str(prefix), '--no-save', '--no-audit', '--no-fund', '--ignore-scripts',
               f'onnxruntime-web@{ORT_WEB_VERSION}']
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f'npm install onnxruntime-web@{ORT_WEB_VERSION} took over {NPM_TIMEOUT_S} s: is the npm '
                          f'registry reachable?') from None
    dist = prefix / 'node_modules' / 'onnxruntime-web' / 'dist'
    missing = [name for name in ORT_WEB_FILES if not (dist / name).is_file()]
    if result.returncode != 0 or missing:
        log = (result.stdout + result.stderr).strip()[-1500:]
        what = f'exit {result.returncode}' if result.returncode else f'{", ".join(missing)} missing from the package'
        raise ExportError(f'npm could not install onnxruntime-web@{ORT_WEB_VERSION} ({what}; offline, or no access '
                          f'to the npm registry?):\n{log}')
    return dist


def write_web_folder(folder, onnx_path, sidecar_path, cache: Path | None = None) -> Path:
    """The static page in `folder`: the page files, the model as model.onnx and model.json, onnxruntime-web.
    Returns the path of index.html."""
    folder = Path(folder)
    runtime = onnxruntime_web_files(cache)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_FOLDER / name, folder / name)
    for name in ORT_WEB_FILES:
        shutil.copyfile(runtime / name, folder / name)
    shutil.copyfile(onnx_path, folder / 'model.onnx')
    shutil.copyfile(sidecar_path, folder / 'model.json')
    return folder / 'index.html'
