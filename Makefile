# sds3d — set-up, tests and the main job. Every target works on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch when no NVIDIA driver is present (a plain `torch` pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
# open3d-cpu links libGL / libX11 / libgomp; the browser test drives Debian's chromium with
# Playwright's Python client (never a downloaded browser).
APT_PACKAGES ?= libgl1 libx11-6 libgomp1 chromium
# The tests run next to their own subprocesses (CLI, UI server, browser): OpenMP workers wait
# passively there. `sds3d` itself picks the wait policy from the machine's load (app/openmp.py).
TEST_WAIT_POLICY ?= PASSIVE

.PHONY: install system-deps test lint demo bench clean

install: $(BIN)/sds3d

$(BIN)/sds3d: pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q torch; \
	else \
	  $(BIN)/python -m pip install -q $(TORCH_CPU); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(BIN)/sds3d

system-deps:
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi; \
	fi

test: install
	OMP_WAIT_POLICY=$(TEST_WAIT_POLICY) $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/render.py

# The main job on the embedded default prior: text -> textured mesh (GLB, OBJ+MTL+PNG) + splats.
DEMO_PROMPT ?= a red cube
demo: install
	$(BIN)/sds3d generate "$(DEMO_PROMPT)" --out outputs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
