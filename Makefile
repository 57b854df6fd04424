# Two commands on a fresh machine: `make demo` (the whole main job) and `make test`.
# Both build .venv from requirements.txt first; the stamp file makes that a no-op when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_DATA := data/processed_demo
comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: venv test test-all demo default-model selfsup-demo selfsup-n2v-demo benchmark thesis-demo multiworker-demo clean

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
	@echo
	@echo "Figures and metrics: runs/demo/ (default U-Net; metrics.json: test patients, against the 3T image and the truth)"

# The shipped default model (models/default/, breastmri/restore/shipped.py): a generated cohort of 100 phantom patients
# (the demo's 12 first, so the demo's held-out patients stay held out), trained at the budget of configs/full.yaml,
# evaluated on the cohort's test patients (runs/full/metrics.json), then copied with its training record.
COHORT_DATA := data/processed_cohort
default-model: venv
	$(BIN)/python preprocessing.py --config configs/full.yaml --out $(COHORT_DATA)
	$(BIN)/python main.py --config configs/full.yaml --data $(COHORT_DATA) --run-dir runs/full
	$(BIN)/python -m breastmri.restore.shipped runs/full --data $(COHORT_DATA)

# Self-supervised training (docs/selfsupervised.md): noise2noise between the pre-contrast frames of
# the demo's simulated 1.5T series, never reading a clean or truth array; scored against the truth on the test
# patients. Shares the demo's preprocessed arrays (reused when `make demo` ran first).
selfsup-demo: venv
	$(BIN)/python preprocessing.py --config configs/demo.yaml --out $(DEMO_DATA)
	$(BIN)/python main.py --config configs/selfsup.yaml --data $(DEMO_DATA) --run-dir runs/selfsup_demo
	@echo
	@echo "Figures and metrics: runs/selfsup_demo/ (noise2noise; metrics.json 'truth': test patients vs the noise-free truth)"

# The blind-spot mode on the same series and budget (noise2void: needs no repeated frames).
selfsup-n2v-demo: venv
	$(BIN)/python preprocessing.py --config configs/demo.yaml --out $(DEMO_DATA)
	$(BIN)/python main.py --config configs/selfsup.yaml --set train.mode=noise2void --data $(DEMO_DATA) \
		--run-dir runs/selfsup_n2v

# Baselines (NLM, TV, wavelet, BM3D, and the multi-frame BM4D and MP-PCA) and the U-Net on the same test slices,
# against the truth and the 3T image, lesion kinetics, speed and scaling. 16 slices, 8 positions x 2 time points:
# BM4D costs ~15-25 s per (x, y, t) stack, and each serves 2 scored slices (16-19 min on 2 cores here, 10-21 by machine).
# The self-supervised runs of `make selfsup-demo` and `make selfsup-n2v-demo` join the table when they exist.
SELFSUP = $(patsubst %/model.keras,%,$(wildcard runs/selfsup_demo/model.keras runs/selfsup_n2v/model.keras))
# The real-data part (breastmri/evaluate/benchmark_real.py): the ProstateX TWIST dynamic of ../shared/realdata, frame
# by frame against its real 3T frames, when that folder is beside the repository.
REAL_DATA = $(wildcard ../shared/realdata/prostatex-0218)
benchmark: venv
	$(BIN)/python benchmark.py --run-dir runs/demo --data $(DEMO_DATA) --max-slices 16 --kinetics-lesions 4 \
		--methods noisy,nlm,tv,wavelet,bm3d,bm4d,mppca,tpca,nordic,unet \
		$(if $(SELFSUP),--selfsup-runs $(subst $(space),$(comma),$(strip $(SELFSUP)))) \
		$(if $(REAL_DATA),--real-data $(REAL_DATA) --real-filter Twist)

# The thesis reproduction study (docs/thesis.md): each reading of the thesis autoencoder
# against the thesis' Table 1 and the degraded input, Gaussian noise, 256x256, a CPU budget (~7 min on 2 cores).
thesis-demo: venv
	$(BIN)/python preprocessing.py --config configs/thesis.yaml --set preprocess.image_size=256 \
		--out data/processed_thesis_demo
	$(BIN)/python -m breastmri.studies.thesis --data data/processed_thesis_demo --run-dir runs/thesis_demo

# Two workers on 127.0.0.1 (free ports picked at run time; breastmri/restore/multiworker.py) train the demo config
# with MultiWorkerMirroredStrategy at a short budget, each making half of every global batch of 16, and the chief
# evaluates on the test patients: runs/multiworker/ (docs/training.md, "Several machines").
multiworker-demo: venv
	$(BIN)/python preprocessing.py --config configs/demo.yaml --out $(DEMO_DATA)
	$(BIN)/python -m breastmri.restore.multiworker --workers 2 --timeout 900 -- --config configs/demo.yaml \
		--set train.epochs=3 --data $(DEMO_DATA) --run-dir runs/multiworker

clean:
	rm -rf runs data
