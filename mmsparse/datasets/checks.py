"""Early, readable checks of a config's dataset paths.

Without them a missing or broken annotation file surfaces minutes later, deep inside a
dataloader worker, as a bare ``FileNotFoundError`` or ``KeyError``. We check before the
Runner is built and name the config key, the path and the fix.
"""
import json
import os.path as osp

REQUIRED_COCO_KEYS = ('images', 'annotations', 'categories')


class DatasetPathError(ValueError):
    """A config's dataset points at a missing or malformed annotation file or image folder."""


def _datasets_in(cfg_node):
    """Yield every dataset config in a (possibly wrapped) dataset config."""
    if cfg_node is None:
        return
    if 'dataset' in cfg_node:  # RepeatDataset / ClassBalancedDataset wrappers
        yield from _datasets_in(cfg_node['dataset'])
    elif 'datasets' in cfg_node:  # ConcatDataset
        for sub in cfg_node['datasets']:
            yield from _datasets_in(sub)
    else:
        yield cfg_node


def _resolve(data_root, path):
    if not path:
        return data_root
    return path if osp.isabs(path) or not data_root else osp.join(data_root, path)


def check_coco_annotation_file(path, where):
    """Raise :class:`DatasetPathError` unless ``path`` is a readable COCO JSON file."""
    if not osp.isfile(path):
        raise DatasetPathError(
            f'{where}: annotation file {path!r} does not exist. For the built-in shapes '
            'dataset run `python tools/misc/make_shapes_dataset.py` (or `make data`), '
            'otherwise set data_root / ann_file in the config or with --cfg-options.')
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetPathError(f'{where}: annotation file {path!r} is not valid JSON: {e}')
    missing = [k for k in REQUIRED_COCO_KEYS if not isinstance(content, dict) or k not in content]
    if missing:
        raise DatasetPathError(f'{where}: annotation file {path!r} is not COCO format: '
                               f'missing key(s) {missing}')


def check_dataset_paths(cfg, dataloader_keys=('train_dataloader', 'val_dataloader',
                                              'test_dataloader')):
    """Check the annotation files and image folders of the given dataloaders of ``cfg``.

    Args:
        cfg: An mmengine ``Config`` (or dict).
        dataloader_keys: Which dataloaders to check; absent ones are skipped.

    Raises:
        DatasetPathError: naming the config key and the offending path.
    """
    for key in dataloader_keys:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _datasets_in(loader.get('dataset')):
            data_root = ds.get('data_root', '') or ''
            where = f'{key}.dataset ({ds.get("type", "?")})'
            if data_root and not osp.isdir(data_root):
                raise DatasetPathError(
                    f'{where}: data_root {data_root!r} is not a directory. For the built-in '
                    'shapes dataset run `python tools/misc/make_shapes_dataset.py`.')
            ann_file = ds.get('ann_file')
            if ann_file:
                check_coco_annotation_file(_resolve(data_root, ann_file), where)
            img_dir = (ds.get('data_prefix') or {}).get('img')
            if img_dir is not None and not osp.isdir(_resolve(data_root, img_dir)):
                raise DatasetPathError(
                    f'{where}: image folder {_resolve(data_root, img_dir)!r} does not exist.')
