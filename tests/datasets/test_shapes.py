"""The synthetic shapes generator: determinism, COCO validity, the difficulty knobs."""
import filecmp
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mmsparse.datasets.shapes import (CLASSES, ShapesSpec, dataset_is_current,
                                      make_shapes_dataset, render_image)

SMALL = ShapesSpec(image_size=64, num_train=6, num_val=3, seed=3)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    make_shapes_dataset(tmp_path / 'a', SMALL)
    make_shapes_dataset(tmp_path / 'b', SMALL)
    make_shapes_dataset(tmp_path / 'c', ShapesSpec(image_size=64, num_train=6, num_val=3,
                                                   seed=4))
    for rel in ['annotations/instances_train.json', 'annotations/instances_val.json',
                'train/000000.png', 'train/000005.png', 'val/000002.png']:
        assert filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'b' / rel, shallow=False), rel
    assert not filecmp.cmp(tmp_path / 'a/train/000000.png', tmp_path / 'c/train/000000.png',
                           shallow=False)
    assert dataset_is_current(tmp_path / 'a', SMALL)
    assert not dataset_is_current(tmp_path / 'a', ShapesSpec(image_size=64, num_train=7,
                                                             num_val=3, seed=3))


def test_annotations_are_valid_coco_and_match_their_polygons(tmp_path):
    coco_dict = make_shapes_dataset(tmp_path, ShapesSpec(image_size=96, num_train=20,
                                                         num_val=4))['train']
    coco = COCO(str(tmp_path / 'annotations/instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(CLASSES) >= 4
    assert len(coco_dict['annotations']) >= 20
    used = {a['category_id'] for a in coco_dict['annotations']}
    assert len(used) >= 4, 'expected most classes to appear in 20 images'
    for ann in coco_dict['annotations']:
        rle = coco.annToRLE(ann)
        assert mask_utils.area(rle) == pytest.approx(ann['area'])
        assert list(mask_utils.toBbox(rle)) == pytest.approx(ann['bbox'])
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
        assert ann['iscrowd'] == 0 and all(len(p) >= 6 for p in ann['segmentation'])
    sizes = [a['area'] for a in coco_dict['annotations']]
    assert max(sizes) > 4 * min(sizes), 'object sizes should vary widely'


def test_rendered_instances_are_visible_parts_and_images_are_noisy():
    spec = ShapesSpec(image_size=96, max_objects=6, difficulty=1.5)
    for i in range(20):
        img, instances = render_image(np.random.default_rng(i), spec)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        masks = np.stack([m for _, m in instances])
        assert masks.sum(0).max() <= 1, 'visible masks of one image must not overlap'
        # Neighbouring pixels differ: noise and texture, not flat colour fields.
        assert np.abs(np.diff(img.astype(int), axis=1)).mean() > 2


def test_difficulty_zero_is_cleaner_than_default():
    def roughness(difficulty):
        img, _ = render_image(np.random.default_rng(0), ShapesSpec(difficulty=difficulty))
        return np.abs(np.diff(img.astype(int), axis=1)).mean()
    assert roughness(0.0) < roughness(1.0)


@pytest.mark.parametrize('kwargs', [dict(difficulty=3), dict(image_size=8), dict(num_val=0),
                                    dict(min_size=0.3, max_size=0.2), dict(max_objects=0)])
def test_invalid_knobs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ShapesSpec(**kwargs)


def test_json_records_its_spec(tmp_path):
    make_shapes_dataset(tmp_path, SMALL)
    info = json.loads((tmp_path / 'annotations/instances_val.json').read_text())['info']
    assert info['spec']['seed'] == 3 and info['spec']['image_size'] == 64
