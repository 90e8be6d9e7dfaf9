# MapLLaVA quick start: `make demo` (set up, then run the main job on synthetic data) and
# `make test` (set up, lint, run the test suite). Both build .venv on first use.
# The demo's synthetic set has the v1.0-trainval layout with 40 short scenes (32 train /
# 8 val, 5 keyframes each): as many samples as the 10-scene mini, four times the road
# layouts. `make data VERSION=v1.0-mini SCENES=10 SAMPLES_PER_SCENE=20` writes a mini.
PY := .venv/bin/python
DATA ?= data/nuscenes
VERSION ?= v1.0-trainval
SCENES ?= 40
SAMPLES_PER_SCENE ?= 5
SEED ?= 0
# the camera demo + LiDAR depth supervision of the LSS depth net (training only; the test is
# camera-only): the best of the demo runs in docs/benchmarks.md
DEMO_CONFIG ?= configs/mapllava/mapllava_tiny-depth_1xb4-demo_synthetic-nus-map.py
# The QA demo's set (configs/mapllava/mapllava_tiny-full-qa_*): the same maps and 32 train
# scenes' start lanes, but the ego may start anywhere on its first lane (as many scenes approach an
# intersection as leave one), and 16 val scenes, so that every question type has more than
# one answer on val (docs/benchmarks.md, "The demo that talks").
QA_DATA ?= data/nuscenes-qa
# train + val scenes of the QA set (16 of them val)
QA_SCENES ?= 48
# three times the QA demo's train scenes and 16 val scenes of their own (the -16e_*-112 config)
QA112_DATA ?= data/nuscenes-qa-112
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo data data-qa data-qa-112 test lint clean

setup:
	bash tools/setup_env.sh

$(DATA)/$(VERSION)/sample.json: | setup
	$(PY) tools/create_synthetic_nuscenes.py --out $(DATA) --version $(VERSION) --seed $(SEED) \
		--scenes $(SCENES) --samples-per-scene $(SAMPLES_PER_SCENE)

data: setup $(DATA)/$(VERSION)/sample.json
	$(PY) tools/create_data.py nuscenes --root-path $(DATA) --version $(VERSION) --out-dir $(DATA)

$(QA_DATA)/$(VERSION)/sample.json: | setup
	$(PY) tools/create_synthetic_nuscenes.py --out $(QA_DATA) --version $(VERSION) --seed $(SEED) \
		--scenes $(QA_SCENES) --val-scenes 16 --samples-per-scene $(SAMPLES_PER_SCENE) --start-span 1.0

data-qa: setup $(QA_DATA)/$(VERSION)/sample.json
	$(PY) tools/create_data.py nuscenes --root-path $(QA_DATA) --version $(VERSION) \
		--out-dir $(QA_DATA)

data-qa-112:
	$(MAKE) data-qa QA_DATA=$(QA112_DATA) QA_SCENES=112

# train the tiny config on CPU (validation each epoch keeps best_model.pth), then test it:
# the mAP table is printed, BEV + camera pictures go to $(WORK_DIR)/vis
demo: data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(WORK_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $(WORK_DIR)/best_model.pth --work-dir $(WORK_DIR)/test \
		--out $(WORK_DIR)/test/preds.pkl --show-dir $(WORK_DIR)/vis

lint: setup
	.venv/bin/ruff check projects tools tests configs

test: setup lint
	.venv/bin/pytest -q

clean:
	rm -rf $(WORK_DIR)
