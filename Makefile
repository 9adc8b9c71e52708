# GeoCLIP for QGIS: `make setup`, `make test`, `make run`, `make bench`.
# Every target does its own set-up and can be run again safely.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-done
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages: QGIS and its Python (GDAL, PyQt5 come with it), venv, exiftool (test oracle for
# EXIF GPS), Xvfb + xwd + ImageMagick (the real QGIS desktop in tests and screenshots), poppler-utils
# (the case report's PDF turned back into pictures and text in tests).
APT_PACKAGES := python3-venv python3-pip python3-qgis qgis qgis-providers python3-gdal gdal-bin \
                libimage-exiftool-perl xvfb x11-apps imagemagick poppler-utils
TORCH_VERSION ?= 2.13.0
# The release pinned in one place, the plugin installer's (geoclip_qgis/core/deps.py).
GEOCLIP_RELEASE := $(shell sed -n 's/^HEADS_RELEASE = "\(.*\)"/\1/p' geoclip_qgis/core/deps.py)
CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: setup test test-fast test-qgis-versions lint run bench package wheelhouse clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@# torch: a CUDA build where an NVIDIA driver is present, else the CPU build.
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	  elif curl -sf -m 5 -o /dev/null $(CPU_INDEX)/torch/; then \
	    $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(CPU_INDEX); \
	  else $(PIP) install -q "torch==$(TORCH_VERSION)"; fi; \
	fi
	$(PIP) install -q -e ".[test,ray]"
	@# The official release: the source of the trained heads and gallery, and the parity oracle.
	$(PIP) install -q --no-deps "$(GEOCLIP_RELEASE)"
	@# scikit-image only for its sample photos (skimage/data) used by tests and benchmarks.
	$(PIP) install -q --no-deps "scikit-image==0.26.0"
	$(PY) -c "import torch, transformers, PIL, numpy, osgeo, qgis.core; print('setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| numpy', numpy.__version__, '| QGIS', qgis.core.Qgis.QGIS_VERSION)"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# The engine and the command line only (no QGIS, no desktop, nothing slow): the loop while developing.
test-fast: setup
	$(PY) -m pytest -q -m "not qgis and not desktop and not slow"

# The plugin in QGIS 3.40 LTR (Debian 13 trixie) and 3.44 (Debian sid): each a Debian root built once with
# mmdebstrap and cached under ~/.cache/geoclip-qgis/qgis-roots, where the plugin's QGIS and desktop tests
# run. Says why in one line and succeeds where this machine cannot build such roots. (3.22 is `make test`.)
test-qgis-versions:
	/usr/bin/python3 tools/qgis_versions.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# QGIS with the plugin from this checkout (linked, so edits show on the next start), in a profile of
# its own; the venv's packages (torch, transformers) are put on QGIS's Python path.
QGIS_DEV := $(CURDIR)/.cache/qgis-dev
run: setup
	$(PY) tools/deploy_plugin.py $(QGIS_DEV)/profiles
	@[ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || echo "No display: start QGIS from a desktop session (or under Xvfb)."
	PYTHONPATH=$$($(PY) -c "import site; print(site.getsitepackages()[0])") \
	  qgis --noversioncheck --profiles-path $(QGIS_DEV)

bench: setup
	$(PY) bench/bench_predict.py

package: setup
	$(PY) tools/package_plugin.py --out dist

# Every wheel the plugin's offline install needs, for machines without internet (same Python version and
# platform as the target QGIS). In QGIS: Install dependencies... > from a folder of wheels.
wheelhouse: setup
	PYTHONPATH=$(CURDIR) $(PY) -m geoclip_qgis.install.installer wheelhouse wheelhouse --python /usr/bin/python3 \
	  --torch "torch==$(TORCH_VERSION)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
