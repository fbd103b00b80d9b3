# moelua -- build, test and benchmark. `make help` lists the targets.
CC      ?= gcc
BUILD   ?= build
PKGS    := luajit libedit openblas zlib libxxhash
OPT     ?= -O3 -g
SAN     ?=
# recursive (=) so pkg-config runs at build time, after `deps` has installed it
# -fwrapv: integer tensor arithmetic wraps around (two's complement), as in NumPy/PyTorch
# memory-safety warnings are errors (gcc 12's -Wuse-after-free caught one in roc_auc)
WERROR  ?= $(if $(findstring clang,$(CC)),,-Werror=use-after-free -Werror=free-nonheap-object -Werror=return-type)
CFLAGS   = $(OPT) $(SAN) -std=gnu11 -fPIC -fwrapv -fno-math-errno -fno-trapping-math -fopenmp-simd -Wall -Wextra -Wno-unused-parameter -Wshadow \
           $(WERROR) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   = $(SAN) $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread -ldl $(CUDA_LIBS) $(MPI_LIBS)
VERSION := 0.1.0
CFLAGS  += -DMOE_VERSION=\"$(VERSION)\"

ENGINE_SRC := $(wildcard src/core/*.c src/cpu/*.c src/nn/*.c src/train/*.c src/data/*.c src/dist/*.c src/lua/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/obj/%.o)
HEADERS    := $(wildcard src/core/*.h src/cpu/*.h src/lua/*.h src/train/*.h src/data/*.h src/nn/*.h src/dist/*.h)

# The MPI backend of moe.distributed (src/dist/mpi.c) is built when OpenMPI is
# found, by its pkg-config (ompi-c) or by mpicc --showme; MPI=0 leaves it out
# (a 1-rank world only). Recursive (=), as CFLAGS: `deps` may just have installed it.
MPI       ?= auto
MPI_FOUND  = $(if $(filter 0,$(MPI)),,$(shell pkg-config --exists ompi-c 2>/dev/null && echo pc || \
               (command -v mpicc >/dev/null 2>&1 && echo mpicc)))
MPI_CFLAGS = $(if $(MPI_FOUND),-DMOE_WITH_MPI $(if $(filter pc,$(MPI_FOUND)),$(shell pkg-config --cflags ompi-c),$(shell mpicc --showme:compile)))
MPI_LIBS   = $(if $(MPI_FOUND),$(if $(filter pc,$(MPI_FOUND)),$(shell pkg-config --libs ompi-c),$(shell mpicc --showme:link)))
$(BUILD)/obj/src/dist/mpi.o: CFLAGS += $(MPI_CFLAGS)

# The CUDA backend is built whenever nvcc is found (on PATH or in /usr/local/cuda),
# or with CUDA=1; CUDA=0 leaves it out. The runtime is linked statically, so the
# binary runs (and reports no device) on machines without a driver.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc ))
CUDA ?= $(if $(NVCC),1,0)
ifeq ($(CUDA),1)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_SRC   := $(wildcard src/cuda/*.cu)
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
ENGINE_OBJ += $(CUDA_OBJ)
CFLAGS     += -DMOE_WITH_CUDA
# SASS for sm_80 (A100; runs on 8.x) and sm_90 (H100), plus compute_90 PTX that
# the driver compiles at load time for newer GPUs (a JIT on first use, cached)
NVFLAGS    ?= -O3 -std=c++17 -Xcompiler -fPIC -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
              -gencode arch=compute_90,code=compute_90
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lpthread -lstdc++
CU_COMPILE  = $(NVCC) $(NVFLAGS) -c $< -o $@
# The NCCL backend of moe.distributed (src/dist/nccl.c: collectives on device
# tensors) is built when nccl.h is found in the toolkit (or NCCL_HOME/include);
# NCCL=0 leaves it out, NCCL=1 insists. libnccl itself is opened at the first
# device collective (dlopen; MOE_NCCL names its path), so nothing links to it
# and the binary still starts where it is missing.
NCCL       ?= auto
NCCL_HOME  ?= $(CUDA_HOME)
NCCL_FOUND := $(if $(filter 0,$(NCCL)),,$(wildcard $(NCCL_HOME)/include/nccl.h))
ifneq ($(NCCL_FOUND),)
$(BUILD)/obj/src/dist/nccl.o: CFLAGS += -DMOE_WITH_NCCL -I$(NCCL_HOME)/include -I$(CUDA_HOME)/include
else ifeq ($(NCCL),1)
$(error NCCL=1, but there is no nccl.h in $(NCCL_HOME)/include (set NCCL_HOME))
else ifeq ($(NCCL),0)
$(BUILD)/obj/src/dist/nccl.o: CFLAGS += -DMOE_NCCL_OFF
endif
endif
# CUDA=emu: the same .cu files built by g++ against the host emulator in
# src/cuda/emu (fibers for thread blocks, cuBLAS on OpenBLAS, device memory
# that host code cannot touch): `make emu-test` runs the CUDA specs with it.
ifeq ($(CUDA),emu)
CUDA_SRC   := $(wildcard src/cuda/*.cu)
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o) $(BUILD)/obj/src/cuda/emu/emu.o
ENGINE_OBJ += $(CUDA_OBJ)
CFLAGS     += -DMOE_WITH_CUDA -DMOE_CUDA_EMU_BUILD
CUDA_LIBS  := -lstdc++
EMU_CXX     = g++ $(OPT) $(SAN) -std=c++17 -fPIC -Wall -Wno-unused-parameter -Wno-unused-function -Isrc/cuda/emu $(shell pkg-config --cflags openblas 2>/dev/null)
CU_COMPILE  = $(EMU_CXX) -x c++ -c $< -o $@
endif


.PHONY: gpu-check all deps run test asan-test emu-test bench bench-dist results clean help fuzz fuzz-deps fuzz-build format format-check \
        install uninstall docs

all: deps $(BUILD)/moelua $(BUILD)/moe/core.so

deps:
	@scripts/deps.sh

$(BUILD)/obj/%.o: %.c $(HEADERS) Makefile | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(HEADERS) $(wildcard src/cuda/*.cuh src/cuda/*.h src/cuda/emu/*.h) Makefile | deps
	@mkdir -p $(dir $@)
	$(CU_COMPILE)

$(BUILD)/obj/src/cuda/emu/emu.o: src/cuda/emu/emu.cc $(wildcard src/cuda/emu/*.h) Makefile | deps
	@mkdir -p $(dir $@)
	$(EMU_CXX) -c $< -o $@

$(BUILD)/libmoe.a: $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moe/core.so: $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $^ $(SAN) $(shell pkg-config --libs openblas zlib libxxhash) -lm -lpthread -ldl $(CUDA_LIBS) $(MPI_LIBS)

# the checkout's lua/ is compiled in: build/moelua (or a copy of it) runs the Lua files beside its C
$(BUILD)/moelua: src/main.c $(BUILD)/libmoe.a $(HEADERS) Makefile | deps
	$(CC) $(CFLAGS) '-DMOELUA_LUADIR="$(CURDIR)/lua"' -Wl,-E -o $@ src/main.c $(BUILD)/libmoe.a $(LDLIBS)

$(BUILD)/test_engine: spec/c/test_engine.c $(BUILD)/libmoe.a $(HEADERS) | deps
	$(CC) $(CFLAGS) -o $@ spec/c/test_engine.c $(BUILD)/libmoe.a $(LDLIBS)

# a C program that includes only src/core/moe.h (run on the CPU build and the emulator's)
$(BUILD)/public_api: spec/c/public_api.c $(BUILD)/libmoe.a src/core/moe.h | deps
	$(CC) $(CFLAGS) -o $@ spec/c/public_api.c $(BUILD)/libmoe.a $(LDLIBS)

# the main job: a first model on the bundled census-income data
run: all
	$(BUILD)/moelua run models/mmoe_census.lua

# C checks, then every busted spec; the last line is "N passed, N failed".
# Where clang can build the libFuzzer harnesses, each also runs for FUZZ_TEST_TIME s;
# a Lua runtime error from moe.load on a damaged file is a failure (a missing check;
# FUZZ_TEST_LUA_ERRORS=log lists them instead).
FUZZ_TEST_TIME ?= 30
FUZZ_TEST_LUA_ERRORS ?= fail
test: all $(BUILD)/test_engine $(BUILD)/public_api
	@scripts/deps.sh clang-format
	@$(MAKE) --no-print-directory BUILD=build-emu CUDA=emu OPT="-O1 -g" build-emu/moelua build-emu/public_api
	@if spec/fuzz/run.sh --can-build; then rm -f build-fuzz/*_fuzz; $(MAKE) --no-print-directory fuzz-build; \
	  MOE_FUZZ_TIME=$(FUZZ_TEST_TIME) FUZZ_LUA_ERRORS=$(FUZZ_TEST_LUA_ERRORS) scripts/test.sh $(BUILD); \
	  else echo "(clang with libFuzzer is not installed: no fuzzing; make fuzz-deps installs it)"; \
	  scripts/test.sh $(BUILD); fi

# the same suite under AddressSanitizer and UBSan
asan-test: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow" \
	  build-asan/moelua build-asan/moe/core.so build-asan/test_engine build-asan/public_api
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  MOELUA_ASAN=1 scripts/test.sh build-asan

# the CUDA specs (and the rest) against the host emulator of src/cuda/emu
emu-test: deps
	@$(MAKE) --no-print-directory BUILD=build-emu CUDA=emu OPT="-O1 -g" build-emu/moelua build-emu/moe/core.so build-emu/test_engine build-emu/public_api
	@MOE_CUDA_EMU=1 scripts/test.sh build-emu

# libFuzzer harnesses for the CSV reader and the checkpoint loader (spec/fuzz/README.md):
# clang builds the engine with -fsanitize=fuzzer-no-link,address,undefined in build-fuzz
FUZZ_TIME ?= 30
# (clang 14 does not define gcc's __SANITIZE_ADDRESS__, by which the engine turns its pools off for ASan)
FUZZ_SAN  := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
             -D__SANITIZE_ADDRESS__=1
fuzz-deps:
	@scripts/deps.sh clang libclang-rt-dev

fuzz-build: fuzz-deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang CUDA=0 OPT="-O1 -g -Wno-pass-failed" SAN="$(FUZZ_SAN)" \
	  build-fuzz/csv_fuzz build-fuzz/ckpt_fuzz

fuzz: fuzz-build
	@spec/fuzz/run.sh $(FUZZ_TIME)

$(BUILD)/%_fuzz: spec/fuzz/%_fuzz.c $(BUILD)/libmoe.a $(HEADERS) | deps
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(BUILD)/libmoe.a $(LDLIBS)

bench: all $(BUILD)/bench_peak
	@MOE_BENCH_PEAK=$(BUILD)/bench_peak $(BUILD)/moelua bench/run.lua

# issue 17's benchmark: collectives, 1- against 2-rank scaling of the sparse MoE layer
# (data and expert parallel) and of the census MMoE (fit epoch, step against PyTorch
# DDP), then the communication model; needs mpirun (bench/README.md, "Across processes")
bench-dist: all
	@$(BUILD)/moelua bench/dist_scale_run.lua

# issue 18's results: the synthetic experiment (figures 4 and 5) and the census table (about 50 min on 2 cores)
results: all
	$(BUILD)/moelua run models/moe_vs_mmoe.lua --out build/results/moe_vs_mmoe
	$(BUILD)/moelua run bench/census_table.lua --seeds 10 --out build/results/census_table.md

# the CPU's fp32 FMA and bf16 dot-product ceilings on one core (bench/peak.c)
$(BUILD)/bench_peak: bench/peak.c
	@mkdir -p $(BUILD)
	$(CC) -O2 -Wall -Wextra -o $@ $<

# issue 15's GPU check (suite, compute-sanitizer, models, benchmarks against PyTorch) on a
# GPU machine; scripts/gpu_bundle.sh packs what it needs first (bench/README.md, "GPU")
gpu-check:
	@scripts/gpu_check.sh

clean:
	rm -rf build build-asan build-emu build-fuzz

# `make install PREFIX=/usr/local DESTDIR=`: LuaJIT's standard directories under PREFIX, so that
# plain `luajit -e 'require "moe"'` finds the library (Debian's luajit searches /usr/local's).
# LuaRocks passes its own BINDIR, LUADIR, CMODDIR (its LIBDIR) and INSTALL_DEV=0 (moelua-*.rockspec).
# The binary is linked again with LUADIR compiled in (src/main.c is one file: seconds); the
# rest is copied from $(BUILD), so an up-to-date build is not rebuilt.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LUADIR      ?= $(PREFIX)/share/lua/5.1
CMODDIR     ?= $(PREFIX)/lib/lua/5.1
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
MANDIR      ?= $(PREFIX)/share/man
DATADIR     ?= $(PREFIX)/share/moelua
# the C side: libmoe.a, moe.h and pkg-config's moelua.pc
INSTALL_DEV ?= 1
LUA_FILES   := $(patsubst lua/%,%,$(shell find lua -name '*.lua' | LC_ALL=C sort))
MODEL_FILES := $(shell find models -name '*.lua' | LC_ALL=C sort)
DATA_FILES  := $(wildcard data/*)
# moelua.pc: libdir and includedir follow prefix, so --define-variable=prefix=... relocates it
PC_LIBDIR   := $(patsubst $(PREFIX)%,$${prefix}%,$(LIBDIR))
PC_INCDIR   := $(patsubst $(PREFIX)%,$${prefix}%,$(INCLUDEDIR))/moelua

install: $(BUILD)/libmoe.a $(BUILD)/moe/core.so
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(CMODDIR)/moe" "$(DESTDIR)$(LUADIR)/moe" "$(DESTDIR)$(MANDIR)/man1"
	$(CC) $(CFLAGS) '-DMOELUA_LUADIR="$(LUADIR)"' -Wl,-E -o "$(DESTDIR)$(BINDIR)/moelua" src/main.c $(BUILD)/libmoe.a $(LDLIBS)
	install -m 755 $(BUILD)/moe/core.so "$(DESTDIR)$(CMODDIR)/moe/core.so"
	@for f in $(LUA_FILES); do install -D -m 644 "lua/$$f" "$(DESTDIR)$(LUADIR)/$$f" || exit 1; done
	@for f in $(MODEL_FILES) $(DATA_FILES); do install -D -m 644 "$$f" "$(DESTDIR)$(DATADIR)/$$f" || exit 1; done
	sed 's/@VERSION@/$(VERSION)/g' docs/moelua.1 > "$(DESTDIR)$(MANDIR)/man1/moelua.1"
ifeq ($(INSTALL_DEV),1)
	install -D -m 644 $(BUILD)/libmoe.a "$(DESTDIR)$(LIBDIR)/libmoe.a"
	install -D -m 644 src/core/moe.h "$(DESTDIR)$(INCLUDEDIR)/moelua/moe.h"
	@mkdir -p "$(DESTDIR)$(LIBDIR)/pkgconfig"
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(PC_LIBDIR)' 'includedir=$(PC_INCDIR)' '' \
	  'Name: moelua' 'Description: the moelua engine: tensors, autograd and Mixture-of-Experts layers (static)' \
	  'Version: $(VERSION)' 'Requires: openblas zlib libxxhash' 'Cflags: -I$${includedir}' \
	  'Libs: -L$${libdir} -lmoe -lm -lpthread -ldl $(CUDA_LIBS) $(MPI_LIBS)' > "$(DESTDIR)$(LIBDIR)/pkgconfig/moelua.pc"
endif
	@echo "installed moelua $(VERSION) under $(DESTDIR)$(PREFIX) (Lua modules in $(LUADIR), moe.core in $(CMODDIR))"

# removes what install put there, and the directories of moelua's own that are left empty
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/moelua" "$(DESTDIR)$(CMODDIR)/moe/core.so" "$(DESTDIR)$(MANDIR)/man1/moelua.1" \
	  "$(DESTDIR)$(LIBDIR)/libmoe.a" "$(DESTDIR)$(INCLUDEDIR)/moelua/moe.h" "$(DESTDIR)$(LIBDIR)/pkgconfig/moelua.pc"
	@for f in $(LUA_FILES); do rm -f "$(DESTDIR)$(LUADIR)/$$f"; done
	@for f in $(MODEL_FILES) $(DATA_FILES); do rm -f "$(DESTDIR)$(DATADIR)/$$f"; done
	@for d in "$(DESTDIR)$(LUADIR)/moe" "$(DESTDIR)$(CMODDIR)/moe" "$(DESTDIR)$(DATADIR)" "$(DESTDIR)$(INCLUDEDIR)/moelua"; do \
	  [ ! -d "$$d" ] || find "$$d" -depth -type d -empty -delete; done

# docs/api.md: the API reference, generated from the documentation registry
# (lua/moe/doc_*.lua, read by lua/moe/doc.lua); spec/docs_spec.lua checks that
# the committed file is what this writes now
docs: $(BUILD)/moelua
	@mkdir -p docs
	@$(BUILD)/moelua doc --markdown > docs/api.md.tmp && mv docs/api.md.tmp docs/api.md
	@echo "wrote docs/api.md"

# the C, C++ and CUDA sources follow .clang-format (make format-check is part of make test)
FORMAT_SRC = $(wildcard src/*.c src/*/*.c src/*/*.h src/cuda/*.cu src/cuda/*.cuh src/cuda/emu/*.cc src/cuda/emu/*.h spec/c/*.c spec/fuzz/*.c bench/*.c)
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	@clang-format --dry-run --Werror $(FORMAT_SRC) && echo "the sources follow .clang-format"

help:
	@echo "make              build build/moelua and build/moe/core.so (installs missing Debian packages)"
	@echo "make run          train models/mmoe_census.lua (the MMoE seed) on data/census-income.test.gz"
	@echo "make test         C checks + busted specs (CPU, and the CUDA specs on the host emulator), fuzzing"
	@echo "                  for FUZZ_TEST_TIME s each where clang has libFuzzer; ends in 'N passed, N failed'"
	@echo "make asan-test    the same under AddressSanitizer/UBSan (build-asan/)"
	@echo "make emu-test     the whole suite on the CUDA host emulator build (build-emu/)"
	@echo "make bench        benchmarks against OpenBLAS/BLIS/oneDNN sgemm and PyTorch (results: bench/README.md)"
	@echo "make bench-dist   issue 17: 1 against 2 ranks (MPI) of the MoE layer and the census MMoE, PyTorch DDP, the comm model"
	@echo "make results      issue 18: the MMoE paper's synthetic experiment and the census table (5 models, 2 task groups)"
	@echo "make fuzz         libFuzzer on the CSV reader and the checkpoint loader, FUZZ_TIME=30 s each (spec/fuzz/README.md)"
	@echo "make fuzz-deps    install clang and libFuzzer's runtime; make fuzz-build builds the harnesses"
	@echo "make format       reformat the sources with .clang-format; make format-check only checks"
	@echo "make docs         write docs/api.md, the API reference, from the documentation registry (lua/moe/doc_*.lua)"
	@echo "make deps         install the missing Debian packages (scripts/deps.sh; every target runs it)"
	@echo "make clean        remove build/, build-asan/, build-emu/, build-fuzz/"
	@echo "make install      install moelua, moe.core, the Lua modules, the man page, libmoe.a/moe.h/moelua.pc"
	@echo "                  under PREFIX=/usr/local (DESTDIR= stages it); make uninstall removes them"
	@echo "make help         this list"
