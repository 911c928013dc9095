# The two commands a fresh machine needs (see README): `make reproduce` and `make test`.
# Both create .venv on first use. TORCH picks the PyTorch build installed before normlab;
# the default is the CPU build (normlab itself accepts any torch>=2.4). EXTRAS are the
# optional parts installed with it: the triton extra needs triton>=3.3, which torch
# before 2.7 does not allow (it pins an older one): drop it there, EXTRAS=lab,test.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= lab,triton,test
PY     := $(VENV)/bin/python

.PHONY: reproduce test bench report-png clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH)"  # torch named again: torchvision must match it, not upgrade it
	touch $@

reproduce: $(VENV)/.installed
	$(VENV)/bin/normlab reproduce $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadgroup $(ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_batchnorm.py $(ARGS)
	$(PY) benchmarks/bench_norms.py $(ARGS)
	$(PY) benchmarks/bench_bn_variants.py $(ARGS)
	$(PY) benchmarks/bench_fold.py $(ARGS)

# The screenshots in docs/ of the shipped reports' HTML pages, by headless Chromium (apt-get install chromium).
report-png: $(VENV)/.installed
	$(PY) -m normlab.lab.browser docs/report/report.html docs/report.png
	$(PY) -m normlab.lab.browser docs/report-full/report.html docs/report-full.png

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
