# The two commands of the README. Both create .venv/ themselves (tools/setup_env.sh).
PY := .venv/bin/python
DEMO_CONFIG ?= configs/cocktail/mask-rcnn_r18_fpn_cocktail_600it_shapes.py
DEMO_DIR ?= work_dirs/demo_cocktail

.PHONY: setup data demo test
setup:
	@bash tools/setup_env.sh

data: setup
	$(PY) tools/misc/make_shapes_dataset.py --out data/shapes

# Co-train the 24 Sparse Cocktail subnets of a CPU-sized Mask R-CNN with the recommended
# recipe on the built-in shapes dataset, then evaluate every subnet (COCO bbox/segm mAP),
# print the table, write the plot.
demo: data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $(DEMO_DIR)/iter_600.pth --subnets all \
		--work-dir $(DEMO_DIR) --out $(DEMO_DIR)/results.json --report $(DEMO_DIR)/report

test: setup
	$(PY) -m pytest tests
