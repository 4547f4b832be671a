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
