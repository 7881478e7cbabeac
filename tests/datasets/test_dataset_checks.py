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
