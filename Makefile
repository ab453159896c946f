# cmsrec: build, test and demo on Debian 12.
#   make demo    install missing packages, build, run the example against the mock CMS
#   make check   install missing packages, build, run every test (ends with "N passed, N failed")
#   make asan    the busted specs against an AddressSanitizer build (part of check)
#   make matrix  build for every Lua and run the busted specs under each (part of check)
#   make fuzz    build the libFuzzer harnesses (fuzz/) and run each for FUZZ_SECONDS (default 60)
#   make valgrind  a subset of the specs under valgrind memcheck (part of check)
#   make LUA=5.1|5.2|5.3|5.4|luajit   build build/<LUA>/cmsrec.so for that Lua (default 5.4)

LUAS       := 5.1 5.2 5.3 5.4 luajit
LUA        ?= 5.4
ifeq ($(filter $(LUA),$(LUAS)),)
$(error LUA must be one of $(LUAS), not '$(LUA)')
endif
ifeq ($(LUA),luajit)
LUA_BIN     = luajit
LUA_PC      = luajit
else
LUA_BIN     = lua$(LUA)
LUA_PC      = lua$(LUA)
endif
BUILD       = build/$(LUA)
CC         ?= cc
PKGS        = $(LUA_PC) libcurl openssl libzip
CFLAGS     ?= -O2 -g
WARN        = -Wall -Wextra -Werror
DEPCFLAGS   = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPLIBS     = $(shell pkg-config --libs libcurl openssl libzip 2>/dev/null)
CORE_SRC    = src/cms_buf.c src/cms_error.c src/cms_sign.c src/cms_request.c \
              src/cms_classify.c src/cms_transfer.c src/cms_sink.c src/cms_zip.c \
              src/cms_url.c src/cms_text.c src/cms_fs.c src/cms_job.c \
              src/cms_secret.c src/cms_trace.c src/cms_gateway.c
CORE_HDR    = $(wildcard src/*.h)
MODULE_SRC  = lua_cmsrec.c $(CORE_SRC)
ASAN_FLAGS  = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# The sanitizer build also takes the named-temporary-file path of cms_sink.c,
# so the specs cover both it and O_TMPFILE (used by the normal build).
ASAN_MODULE_FLAGS = $(ASAN_FLAGS) -DCMS_NO_O_TMPFILE
# libFuzzer harnesses (fuzz/): clang, the whole core instrumented.
FUZZ_CC     = clang
FUZZ_FLAGS  = -O1 -g -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer \
              -fno-sanitize-recover=undefined
FUZZERS     = $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 60

# Debian packages the build, the tests and the demo need.
# Every Lua of the matrix (luajit2 is OpenResty's LuaJIT, the one the nginx
# Lua module is built with), and nginx with that module for the OpenResty tests.
# clang and libclang-rt-14-dev (libFuzzer's runtime) for the fuzz harnesses,
# llvm-14 for llvm-symbolizer (readable stacks), valgrind for memcheck.
DEB_PACKAGES = make gcc pkg-config lua-cjson libcurl4-openssl-dev libssl-dev libzip-dev \
               luarocks lua-busted lua-socket python3 python3-yaml openssl ca-certificates curl \
               lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev \
               lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev nginx libnginx-mod-http-lua \
               clang libclang-rt-14-dev llvm-14 valgrind

.PHONY: all deps build demo check test asan matrix bench fuzz fuzz-build valgrind clean

all: build

# Install only what is missing; apt-get update once, only when needed.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: $(BUILD)/cmsrec.so

build/%/cmsrec.so: $(MODULE_SRC) $(CORE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC -shared $(DEPCFLAGS) -o $@ $(MODULE_SRC) $(DEPLIBS)

build/asan/cmsrec.so: $(MODULE_SRC) $(CORE_HDR)
	@mkdir -p build/asan
	$(CC) $(ASAN_MODULE_FLAGS) $(WARN) -std=gnu99 -fPIC -shared $(DEPCFLAGS) -o $@ $(MODULE_SRC) $(DEPLIBS)

build/unit_core: test/unit_core.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p build
	$(CC) $(ASAN_FLAGS) $(WARN) -std=gnu99 $(DEPCFLAGS) -o $@ test/unit_core.c $(CORE_SRC) $(DEPLIBS)

build/fuzz/fuzz_%: fuzz/fuzz_%.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -std=gnu99 $(DEPCFLAGS) -o $@ $< $(CORE_SRC) $(DEPLIBS)

# Sub-makes: pkg-config flags must be read after deps installed the packages.
demo: deps
	@$(MAKE) --no-print-directory build
	@sh examples/demo.sh

check: deps
	@$(MAKE) --no-print-directory LUA=5.4 build/asan/cmsrec.so build/unit_core
	@for v in $(LUAS); do $(MAKE) --no-print-directory LUA=$$v build || exit 1; done
	@$(MAKE) --no-print-directory fuzz-build
	@sh test/run-tests.sh

matrix: deps
	@for v in $(LUAS); do $(MAKE) --no-print-directory LUA=$$v build || exit 1; done
	@SUITES="$(foreach v,$(LUAS),busted-$(v))" sh test/run-tests.sh

asan: deps
	@$(MAKE) --no-print-directory LUA=5.4 build/asan/cmsrec.so
	@SUITES=asan sh test/run-tests.sh

fuzz-build: $(FUZZERS:%=build/fuzz/fuzz_%)

# Each harness for FUZZ_SECONDS, from the seeds in fuzz/corpus/NAME; what it
# adds goes to build/fuzz/corpus-NAME, a crashing input to build/fuzz/NAME-crash-*.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh fuzz/run.sh $(FUZZERS)

valgrind: deps
	@$(MAKE) --no-print-directory LUA=5.4 build
	@SUITES=valgrind sh test/run-tests.sh

# cmsrec side by side with curl, LuaSocket + LuaSec and Python against nginx
# on loopback (bench/bench.sh); figures are recorded in BENCHMARKS.md. What
# only the benchmark needs is installed by make bench alone (the deps recipe,
# given this list).
BENCH_PACKAGES = nginx libnginx-mod-http-lua curl openssl python3 python3-requests \
                 lua5.4 liblua5.4-dev lua-socket lua-sec gnuplot-nox

bench: deps
	@$(MAKE) --no-print-directory deps DEB_PACKAGES='$(BENCH_PACKAGES)'
	@$(MAKE) --no-print-directory LUA=5.4 build build/bench/measure build/bench/inline-sha/cmsrec.so
	@sh bench/bench.sh

build/bench/measure: bench/measure.c
	@mkdir -p $(@D)
	$(CC) -O2 $(WARN) -std=gnu99 -o $@ $<

# The module as before issue 11 hashed files: inline, on the transfer thread.
build/bench/inline-sha/cmsrec.so: $(MODULE_SRC) $(CORE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) -std=gnu99 -fPIC -shared -DCMS_BG_HASH_MIN=0x7fffffffffffffffLL \
	    $(DEPCFLAGS) -o $@ $(MODULE_SRC) $(DEPLIBS)

clean:
	rm -rf build
