# The two commands of the README. Both create .venv/ themselves (tools/setup_env.sh).
PY := .venv/bin/python
DEMO_CONFIG ?= configs/shapes/mask-rcnn_r18_fpn_shapes.py
DEMO_DIR ?= work_dirs/demo

.PHONY: setup data demo test
setup:
	@bash tools/setup_env.sh

data: setup
	$(PY) tools/misc/make_shapes_dataset.py --out data/shapes

# Train the CPU-sized Mask R-CNN on the built-in shapes dataset and print COCO bbox/segm mAP.
demo: data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)

test: setup
	$(PY) -m pytest tests
