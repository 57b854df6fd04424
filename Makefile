# Two commands on a fresh machine: `make demo` (the whole main job) and `make test`.
# Both build .venv from requirements.txt first; the stamp file makes that a no-op when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DATA := data/processed_demo

.PHONY: venv test test-all demo benchmark clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest

test-all: venv
	$(BIN)/python -m pytest -m ""

demo: venv
	$(BIN)/python demo_data.py --preview
	$(BIN)/python preprocessing.py --config configs/demo.yaml --out $(DEMO_DATA)
	$(BIN)/python main.py --config configs/demo.yaml --data $(DEMO_DATA) --run-dir runs/demo
	$(BIN)/python main.py --config configs/demo.yaml --set model.name=thesis_autoencoder --set train.patch_size=null \
		--set train.learning_rate=1e-4 \
		--data $(DEMO_DATA) --run-dir runs/demo_thesis
	@echo
	@echo "Figures and metrics: runs/demo/ (default U-Net) and runs/demo_thesis/ (thesis autoencoder, same budget)"

# Baselines (BM3D, NLM, TV, wavelet) and both models on the same validation slices, plus speed and scaling.
benchmark: venv
	$(BIN)/python benchmark.py --run-dir runs/demo --thesis-run runs/demo_thesis --data $(DEMO_DATA) --max-slices 48

clean:
	rm -rf runs data
