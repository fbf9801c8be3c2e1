# mta-lite: the only entry points are here.
#   make run    relay + capture smarthost on 127.0.0.1:2525 with sample mail (no root needed)
#   make test   install everything needed, run every test
#   make bench  smtp-source -> relay -> smtp-sink, mta-lite against Postfix (10 sessions, then
#               one client sending one message at a time); ten 10 MB messages
#               at once (peak PSS); then postscreen:
#               1,000 idle connections held, new connections per second, against Postfix's
#   make flash IMAGE=FILE [DEVICE=/dev/sdX] [CONFIG=mta-lite.toml] [FLASH_ARGS=--yes]
#               write an image to an SD card, verified, with the config on its boot partition;
#               without DEVICE it lists the removable disks (docs/flash.md)
#   make image  the SD-card image into dist/ (root; firmware/README.md): .img.xz, .bmap,
#               .sha256, .manifest. The Debian root file system is cached in
#               /var/cache/mta-lite-image: ~15 min the first time, then about a minute + xz
#   make image-test  build the image (no xz: dist/ untouched), inspect it, boot it twice under
#               qemu and relay mail through it (tests/image; ~4 min warm, not part of `make test`)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration test-faults fuzz bench flash image image-test image-deps deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,demo,flash]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mta-lite demo

deps:
	bash tools/install-test-deps.sh

test: $(STAMP) deps
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/dialogs

test-integration: $(STAMP) deps
	$(PY) -m pytest -q tests/integration

# The fault and attack suite alone (also part of `make test`): kill -9 loops, full and
# read-only spools (root: mounts a tmpfs), failing smarthosts, attacks through the daemon.
test-faults: $(STAMP) deps
	$(PY) -m pytest -q tests/faults

# Long fuzzing: FUZZ_EXAMPLES (default 20000) examples per parser; writes new failures and
# each test's target() front into tests/fuzz/corpus/ (commit it). `make test` replays it.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/fuzz tests/faults/test_corrupt_queue.py

bench: $(STAMP) deps
	$(PY) tools/bench/relay_bench.py
	$(PY) tools/bench/relay_bench.py --sessions 1 --messages 500 --sizes 1024 --json bench-one-client.json
	$(PY) tools/bench/bigmsg_bench.py
	$(PY) tools/bench/postscreen_bench.py

flash: $(STAMP)
	@test -n "$(IMAGE)" || { echo "usage: make flash IMAGE=FILE [DEVICE=/dev/sdX] [CONFIG=mta-lite.toml] [FLASH_ARGS=--yes]" >&2; exit 64; }
	$(VENV)/bin/mta-lite-flash '$(IMAGE)' $(if $(DEVICE),'$(DEVICE)') $(if $(CONFIG),--config '$(CONFIG)') $(FLASH_ARGS)

# The image is built with the system's python3 (standard library only) as root, niced: it
# shares the machine with test runs. IMAGE_ARGS passes options (--no-xz, --cache DIR).
image: image-deps
	nice -n 10 python3 -m firmware.image.build $(IMAGE_ARGS)

image-test: $(STAMP) deps image-deps
	nice -n 10 python3 -m firmware.image.build --no-xz $(IMAGE_ARGS)
	MTA_LITE_IMAGE=$(CURDIR)/build/image/disk.img nice -n 10 $(PY) -m pytest -q -s tests/image

image-deps:
	bash firmware/image/install-deps.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
