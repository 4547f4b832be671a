# All set-up lives here so a fresh machine needs only `make demo` or `make test`.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: setup demo test lint bench

setup: $(VENV_STAMP)

# torch first and pinned: an unpinned torch (or a package that asks for one) pulls a multi-GB CUDA build.
$(VENV_STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: setup lint
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check .

demo: setup
	$(PY) data/demo.py

# The C++ NCNN app (sample/ncnn): NCNN is built from its sdist once and cached in ~/.cache/tinydet/.
.PHONY: ncnn-app ncnn-app-arm64
ncnn-app:
	bash sample/ncnn/build.sh host

ncnn-app-arm64:
	bash sample/ncnn/build.sh arm64

# The exported model in a web page (docs/deployment.md, "In a web page"): the released Yolo-FastestV2 weights from
# ../shared, exported with --web and served on 127.0.0.1. onnxruntime-web comes from npm once (~/.cache/tinydet/web/).
.PHONY: web-demo web-test
WEB_DEMO := runs/web-demo
WEB_PORT ?= 8000
web-demo: setup
	$(PY) pytorch2onnx.py --data data/coco.data \
		--weights ../shared/weights/yolo-fastestv2/coco2017-0.241078ap-model.pth \
		--image ../shared/images/bus.jpg --output $(WEB_DEMO)/yolo-fastestv2.onnx --web $(WEB_DEMO)/web
	@echo "open http://127.0.0.1:$(WEB_PORT)/ (Ctrl-C stops the server)"
	python3 -m http.server -d $(WEB_DEMO)/web -b 127.0.0.1 $(WEB_PORT)

# The page in headless Chromium against PyTorch (tests/test_web.py); Debian's chromium is installed when missing.
web-test: setup
	command -v chromium >/dev/null || apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
	$(PY) -m pytest -q -s tests/test_web.py
