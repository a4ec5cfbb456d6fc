# pgkm: PGXS build of pgkm.so, plus the two commands of README.md (demo, test).

EXTENSION = pgkm
MODULE_big = pgkm
DATA = pgkm--1.0.sql pgkm--1.0--1.1.sql pgkm--1.1--1.2.sql pgkm--1.2--1.3.sql pgkm--1.3--1.4.sql pgkm--1.4--1.5.sql pgkm--1.5--1.6.sql
PGFILEDESC = "pgkm - column encryption under a PKCS#11 master key"

OBJS = \
	src/core/aead.o \
	src/core/audit_chain.o \
	src/core/blind_index.o \
	src/core/format.o \
	src/core/key_material.o \
	src/core/nonce_pool.o \
	src/core/secure_arena.o \
	src/core/secure_buffer.o \
	src/core/siv.o \
	src/provider/ckr_names.o \
	src/provider/pin_file.o \
	src/provider/master_label.o \
	src/provider/pkcs11.o \
	src/provider/pkcs11_module.o \
	src/pg/admin.o \
	src/pg/aead_calls.o \
	src/pg/audit.o \
	src/pg/audit_log.o \
	src/pg/audit_log_sql.o \
	src/pg/audit_partitions.o \
	src/pg/audit_ring.o \
	src/pg/audit_row.o \
	src/pg/boundary.o \
	src/pg/cache_stats.o \
	src/pg/catalog.o \
	src/pg/data_path.o \
	src/pg/erasure.o \
	src/pg/events.o \
	src/pg/guc.o \
	src/pg/index_rebuild.o \
	src/pg/jobs.o \
	src/pg/key_cache.o \
	src/pg/key_cache_store.o \
	src/pg/lifecycle.o \
	src/pg/pgkm.o \
	src/pg/redact.o \
	src/pg/shmem.o \
	src/pg/token.o \
	src/pg/verify.o \
	src/pg/worker.o

# pg_regress suites, run by test/regress.sh against a cluster with a SoftHSM2 token.
REGRESS = setup data_path errors privileges rotation key_status lifecycle jobs audit attacks searchable erasure key_cache verify

# JIT bitcode is not worth its build trouble for pgkm (NOTES.md): build native code only.
override with_llvm = no

# On a fresh machine PGXS is not installed yet: `make demo` and `make test` install it
# (scripts/deps.sh) before they build, so the include is optional here.
PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
else
all:
	@echo "PGXS is missing: run 'make deps' (or 'make demo' / 'make test', which do it)"; exit 1
endif

SERVER_INCLUDES := $(shell $(PG_CONFIG) --includedir-server 2>/dev/null)
PKCS11_INCLUDES := -I/usr/include/p11-kit-1
WERROR ?= -Werror
override CPPFLAGS := -Iinclude -isystem $(SERVER_INCLUDES) $(PKCS11_INCLUDES) $(CPPFLAGS)
override CXXFLAGS += -std=c++20 -Wall -Wextra -Wshadow -Wno-register $(WERROR)
SHLIB_LINK += -lcrypto -lstdc++ -ldl

# SANITIZE=1 builds pgkm.so with AddressSanitizer and UndefinedBehaviorSanitizer (for
# scripts/sanitize.sh; the server then needs the ASan runtime preloaded). The objects depend
# on a stamp holding the flavour, so switching SANITIZE rebuilds them all and a later plain
# build never links sanitized objects (or the reverse).
SANITIZE_FLAGS := $(if $(filter 1 yes on,$(SANITIZE)),-fsanitize=address -fsanitize=undefined \
	-fno-omit-frame-pointer -fno-sanitize-recover=undefined)
override CXXFLAGS += $(SANITIZE_FLAGS)
SHLIB_LINK += $(SANITIZE_FLAGS)
EXTRA_CLEAN += .build-flavour
.build-flavour: FORCE
	@echo '$(SANITIZE_FLAGS)' | cmp -s - $@ || echo '$(SANITIZE_FLAGS)' > $@
$(OBJS): .build-flavour
.PHONY: FORCE
FORCE:

.PHONY: demo test unit regress bench bench-searchable deps fuzz
deps:
	scripts/deps.sh
demo:
	scripts/demo.sh
test:
	$(if $(SANITIZE_FLAGS),scripts/sanitize.sh,scripts/test.sh)
unit:
	scripts/unit.sh
regress:
	test/regress.sh
# libFuzzer over the ciphertext parser and the AEAD open path (test/fuzz), for FUZZ_SECONDS.
FUZZ_SECONDS ?= 600
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)
bench:
	bench/run.sh
	bench/rotation.sh
	bench/audit.sh
	bench/searchable.sh
	bench/keys.sh
# Lookups by encrypted equality against plaintext, and det/blind-index rows/s (issue 6).
bench-searchable:
	bench/searchable.sh
