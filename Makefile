# napari-noisyseg developer tasks.
#
#   make install       create $(VENV) and install the package (editable) with test extras
#   make test          run the test suite (under xvfb-run when there is no DISPLAY)
#   make demo          open napari with the nuclei sample and the plugin's widgets
#   make sample-data   regenerate sample_data/ from the real data sets (DATA=...)
#   make screenshots   train briefly in a real napari window, save docs/screenshots/*.png
#
# Variables (override on the command line, e.g. `make test VENV=/tmp/venv`):
#   PYTHON      interpreter that creates the venv            (python3)
#   VENV        virtual environment folder                   (.venv)
#   TORCH_SPEC  torch requirement installed *before* the package (torch==2.13.0,
#               the version CI tests; on the project's machines pip finds a local
#               CPU-only wheel of it). pyproject.toml itself only asks for torch>=2.1,
#               so any other torch works. GPU users, on a new venv:
#                 make clean-venv install TORCH_SPEC=torch   (PyPI's build, CUDA on Linux)
#               (an existing venv is not reinstalled when only TORCH_SPEC changes).
#   TORCH_INDEX extra pip options for that torch install only (empty). A small
#               CPU-only torch elsewhere:
#                 make install TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
#   PYTEST_ARGS extra pytest arguments, e.g. PYTEST_ARGS="-m 'not slow' -x"
#   DEMO_ARGS   extra demo arguments, e.g. DEMO_ARGS="--sample hippocampus_3d"
#   DATA        real data folder for sample-data             (../shared/data)

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
DEMO_ARGS   ?=
DATA        ?= ../shared/data
DEMO_SCREENSHOT ?= demo.png

VPY := $(VENV)/bin/python
VPIP := $(VPY) -m pip
STAMP := $(VENV)/.installed

# A real X display is needed for the GUI tests and the demo: use xvfb-run when
# there is none (and it is installed).
XVFB_RUN := $(shell command -v xvfb-run 2>/dev/null)
ifeq ($(strip $(DISPLAY)),)
  ifneq ($(XVFB_RUN),)
    GUI_WRAP := $(XVFB_RUN) -a -s "-screen 0 1280x1024x24"
  else
    GUI_WRAP := QT_QPA_PLATFORM=offscreen
    GUI_NOTE := @echo "NOTE: no DISPLAY and no xvfb-run: GUI tests will be skipped (install xvfb, see .ci/run)."
  endif
else
  GUI_WRAP :=
endif

.PHONY: all install venv test demo sample-data screenshots clean-venv help

all: install

help:
	@awk 'NR > 1 && /^$$/ {exit} {print}' Makefile

venv: $(STAMP)
install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPIP) install --upgrade pip

# Reinstall only when the packaging metadata changes (the install is editable,
# so source edits need no reinstall).
$(STAMP): pyproject.toml | $(VPY)
	$(VPIP) install $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(VPIP) install -e ".[test]"
	@touch $@

test: $(STAMP)
	$(GUI_NOTE)
	$(GUI_WRAP) $(VPY) -m pytest $(PYTEST_ARGS)

# Interactive with a display; without one, draw on a virtual display and save
# a screenshot instead (an invisible interactive window would never return).
demo: $(STAMP)
ifeq ($(strip $(DISPLAY)),)
ifneq ($(XVFB_RUN),)
	@echo "No DISPLAY: running the demo on a virtual display and saving $(DEMO_SCREENSHOT)."
	$(GUI_WRAP) $(VPY) -m napari_noisyseg.demo --screenshot $(DEMO_SCREENSHOT) $(DEMO_ARGS)
else
	@echo "No DISPLAY and no xvfb-run: cannot show napari (install xvfb, see .ci/run)." >&2; exit 1
endif
else
	$(VPY) -m napari_noisyseg.demo $(DEMO_ARGS)
endif

# The README's screenshots (benchmarks/screenshots.py): a real window, on a
# virtual display big enough for the docked widgets when there is no DISPLAY.
screenshots: $(STAMP)
ifeq ($(strip $(DISPLAY)),)
ifneq ($(XVFB_RUN),)
	$(XVFB_RUN) -a -s "-screen 0 1920x1200x24" $(VPY) benchmarks/screenshots.py
else
	@echo "No DISPLAY and no xvfb-run: cannot draw napari (install xvfb, see .ci/run)." >&2; exit 1
endif
else
	$(VPY) benchmarks/screenshots.py
endif

sample-data: $(STAMP)
	$(VPY) sample_data/make_sample_data.py --data $(DATA)

clean-venv:
	rm -rf $(VENV)
