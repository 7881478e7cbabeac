"""A missing or malformed dataset path fails early with a message naming the culprit."""
import json

import pytest
from mmengine.config import Config

from conftest import TINY_CONFIG, assert_ok, run_tool  # noqa: F401
from mmsparse.datasets import DatasetPathError, check_dataset_paths


def _cfg(data_root):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': str(data_root)})
    return cfg


def test_missing_data_root_names_key_and_path(tmp_path):
    with pytest.raises(DatasetPathError, match=r'train_dataloader\.dataset.*nowhere'):
        check_dataset_paths(_cfg(tmp_path / 'nowhere'), ('train_dataloader',))


def test_missing_annotation_file_suggests_the_generator(tmp_path):
    with pytest.raises(DatasetPathError, match='instances_train.json.*make_shapes_dataset'):
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))


def test_malformed_annotation_files(tmp_path):
    (tmp_path / 'annotations').mkdir()
    ann = tmp_path / 'annotations/instances_train.json'
    ann.write_text('{not json')
    with pytest.raises(DatasetPathError, match='not valid JSON'):
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))
    ann.write_text(json.dumps({'images': []}))
    with pytest.raises(DatasetPathError, match=r"missing key\(s\) \['annotations', 'categories'\]"):
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))


def test_valid_dataset_passes(tiny_data):
    check_dataset_paths(_cfg(tiny_data))


def test_train_tool_reports_missing_dataset_before_building_anything(tmp_path):
    result = run_tool(['tools/train.py', TINY_CONFIG, '--work-dir', tmp_path / 'w',
                       '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}/none'])
    assert result.returncode != 0
    assert 'DatasetPathError' in result.stderr and f'{tmp_path}/none' in result.stderr
    assert not (tmp_path / 'w').exists(), 'the check must run before the Runner is built'


SHAPES = ['circle', 'square', 'triangle', 'star', 'cross']


def _write_coco(path, category_ids=(1, ), names=SHAPES, images=2):
    """A hand-written COCO file: ``images`` images, one box per entry of ``category_ids``
    (on the first image) and the categories ``names`` with ids 1, 2, ..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(
        images=[dict(id=i + 1, file_name=f'{i}.png', width=64, height=64)
                for i in range(images)],
        annotations=[dict(id=i + 1, image_id=1, category_id=c, bbox=[4, 4, 20, 20], area=400,
                          iscrowd=0) for i, c in enumerate(category_ids)],
        categories=[dict(id=i + 1, name=n) for i, n in enumerate(names)])))
    return path


def _val_cfg(tmp_path, ann):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.merge_from_dict({'val_dataloader.dataset.data_root': str(tmp_path),
                         'val_dataloader.dataset.ann_file': str(ann),
                         'val_evaluator.ann_file': str(ann)})
    return cfg


def test_annotations_with_unknown_category_ids_name_the_file_and_ids(tmp_path):
    ann = _write_coco(tmp_path / 'annotations/instances_train.json', category_ids=(1, 7, 9, 7))
    with pytest.raises(DatasetPathError) as err:
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))
    message = str(err.value)
    assert str(ann) in message and 'train_dataloader' in message
    assert '3 annotation(s)' in message and '[7, 9]' in message and '[1, 2, 3, 4, 5]' in message


def test_classes_missing_from_the_file_are_named(tmp_path):
    _write_coco(tmp_path / 'annotations/instances_train.json', names=['circle', 'square'])
    # the shapes dataset's default classes: three of them are not in the file
    with pytest.raises(DatasetPathError, match=r"classes \['triangle', 'star', 'cross'\] are "
                       r"not categories of annotation file .*instances_train\.json"):
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))
    # the config's own metainfo names the classes: the file's names fit, a typo does not
    cfg = _cfg(tmp_path)
    cfg.train_dataloader.dataset.metainfo = dict(classes=('circle', 'square'))
    check_dataset_paths(cfg, ('train_dataloader',))
    cfg.train_dataloader.dataset.metainfo = dict(classes=('circle', 'sqaure'))
    with pytest.raises(DatasetPathError, match=r"classes \['sqaure'\].*'circle', 'square'"):
        check_dataset_paths(cfg, ('train_dataloader',))


def test_an_empty_validation_set_is_an_early_error(tmp_path):
    ann = _write_coco(tmp_path / 'val.json', category_ids=(), images=0)
    with pytest.raises(DatasetPathError, match=f'val_dataloader.*{ann}.* has no images'):
        check_dataset_paths(_val_cfg(tmp_path, ann), ('val_dataloader',))


def test_the_evaluators_annotation_file_is_checked_too(tmp_path):
    good = _write_coco(tmp_path / 'val.json', category_ids=(1, 2))
    check_dataset_paths(_val_cfg(tmp_path, good), ('val_dataloader',))
    bad = _write_coco(tmp_path / 'val_eval.json', category_ids=(1, 12))
    cfg = _val_cfg(tmp_path, good)
    cfg.val_evaluator.ann_file = str(bad)
    with pytest.raises(DatasetPathError, match=f'val_evaluator: annotation file .*{bad}.*'
                       r'\[12\]'):
        check_dataset_paths(cfg, ('val_dataloader',))


def test_a_training_set_without_objects_is_an_early_error(tmp_path):
    _write_coco(tmp_path / 'annotations/instances_train.json', category_ids=())
    with pytest.raises(DatasetPathError, match='no objects of the configured classes.*'
                       'filter_empty_gt'):
        check_dataset_paths(_cfg(tmp_path), ('train_dataloader',))


def test_train_tool_names_wrong_category_ids_before_building_anything(tmp_path):
    _write_coco(tmp_path / 'annotations/instances_train.json', category_ids=(1, 42))
    result = run_tool(['tools/train.py', TINY_CONFIG, '--work-dir', tmp_path / 'w',
                       '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}'])
    assert result.returncode != 0
    assert 'DatasetPathError' in result.stderr and '[42]' in result.stderr
    assert 'instances_train.json' in result.stderr
    assert not (tmp_path / 'w').exists()
