"""Early, readable checks of a config's dataset paths and annotation files.

Without them a missing or broken annotation file surfaces minutes later, deep inside a
dataloader worker, pycocotools or the evaluator, as a bare ``FileNotFoundError``,
``KeyError`` or ``IndexError``. We check before the Runner is built and name the config key,
the path and the fix. Checked: the file exists and is COCO JSON; every annotation's
``category_id`` is one of its ``categories``; every class the config names (``metainfo``, or
the dataset type's default classes) is a category of the file; the file has images (and, for
a training set that drops images without objects, objects of the configured classes).
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


def _ids(values, limit=10):
    """``[1, 2, 3]`` or ``[1, 2, ..., 99] (40 ids)`` for messages."""
    try:
        values = sorted(values)
    except TypeError:  # ids of mixed types (a malformed file)
        values = sorted(values, key=str)
    if len(values) <= limit:
        return str(values)
    return f'{str(values[:limit])[:-1]}, ...] ({len(values)} ids)'


def _check_categories(content, path, where):
    """``{id: name}`` of the file's categories; raise on malformed entries or annotations
    with a ``category_id`` that is not among them."""
    categories, annotations = content['categories'], content['annotations']
    if not isinstance(categories, list) or not all(
            isinstance(c, dict) and 'id' in c and 'name' in c for c in categories):
        raise DatasetPathError(f'{where}: annotation file {path!r}: "categories" must be a '
                               'list of {"id": ..., "name": ...} entries')
    if not isinstance(annotations, list) or not all(
            isinstance(a, dict) and 'category_id' in a and 'image_id' in a
            for a in annotations):
        raise DatasetPathError(f'{where}: annotation file {path!r}: "annotations" must be a '
                               'list of entries with "image_id" and "category_id"')
    names = {c['id']: c['name'] for c in categories}
    unknown = {}
    for ann in annotations:
        if ann['category_id'] not in names:
            unknown[ann['category_id']] = unknown.get(ann['category_id'], 0) + 1
    if unknown:
        raise DatasetPathError(
            f'{where}: annotation file {path!r}: {sum(unknown.values())} annotation(s) have '
            f'a category_id that is not in its "categories": {_ids(unknown)} (the categories '
            f'are {_ids(names)}). Fix those annotations\' category_id or add the missing '
            'categories to the file.')
    return names


def _check_classes(names, classes, path, where):
    """The ids of the configured ``classes`` in the file; raise when one is not there."""
    if classes is None:
        return set(names)
    by_name = {name: cat_id for cat_id, name in names.items()}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise DatasetPathError(
            f'{where}: the config\'s classes {list(missing)} are not categories of annotation '
            f'file {path!r} (its categories: {sorted(by_name, key=str)}). Set the dataset\'s '
            'metainfo=dict(classes=...) to names the file has, and the model\'s num_classes to '
            'their number.')
    return {by_name[c] for c in classes}


def check_coco_annotation_file(path, where, classes=None, must_have_objects=False):
    """Raise :class:`DatasetPathError` unless ``path`` is a usable COCO JSON file.

    Args:
        path: The annotation file.
        where: The config key, for messages.
        classes: The class names the config trains or evaluates (None: not checked).
        must_have_objects: Whether images without objects are dropped (a training set with
            ``filter_empty_gt``), so the file needs objects of ``classes``.
    """
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
    names = _check_categories(content, path, where)
    class_ids = _check_classes(names, classes, path, where)
    if not isinstance(content['images'], list) or not content['images']:
        raise DatasetPathError(f'{where}: annotation file {path!r} has no images (an empty '
                               'dataset); point ann_file at a file with images.')
    if must_have_objects and not any(a['category_id'] in class_ids
                                     for a in content['annotations']):
        raise DatasetPathError(
            f'{where}: annotation file {path!r} has no objects of the configured classes, so '
            'filter_empty_gt=True drops every image (an empty training set); check the file '
            'and the classes.')


def _configured_classes(ds):
    """The class names a dataset config trains or evaluates: its ``metainfo`` classes, else
    its type's default (e.g. COCO's 80, the shapes dataset's 5); None when unknown."""
    classes = (ds.get('metainfo') or {}).get('classes')
    if classes is not None:
        return list(classes)
    try:
        from mmdet.registry import DATASETS  # the registry imports mmdet's datasets
        dataset_type = DATASETS.get(ds.get('type')) if isinstance(ds.get('type'), str) \
            else ds.get('type')
    except Exception:  # an unknown or unregistered type is the Runner's error to report
        return None
    classes = (getattr(dataset_type, 'METAINFO', None) or {}).get('classes')
    return None if classes is None else list(classes)


def _evaluator_ann_files(evaluator):
    """The ``ann_file`` of each evaluator config (a dict or a list of dicts)."""
    for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
        # format_only: results are only written (e.g. for a test server), no file is read;
        # a URI (s3://...) is read through a file backend, not from the local disk
        if (isinstance(metric, dict) and metric.get('ann_file') and not metric.get('format_only')
                and '://' not in str(metric['ann_file'])):
            yield metric['ann_file']


def check_dataset_paths(cfg, dataloader_keys=('train_dataloader', 'val_dataloader',
                                              'test_dataloader')):
    """Check the annotation files and image folders of the given dataloaders of ``cfg``, and
    the annotation files of their evaluators (``val_evaluator`` for ``val_dataloader``).

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
        classes = None
        for ds in _datasets_in(loader.get('dataset')):
            data_root = ds.get('data_root', '') or ''
            where = f'{key}.dataset ({ds.get("type", "?")})'
            if data_root and not osp.isdir(data_root):
                raise DatasetPathError(
                    f'{where}: data_root {data_root!r} is not a directory. For the built-in '
                    'shapes dataset run `python tools/misc/make_shapes_dataset.py`.')
            ann_file = ds.get('ann_file')
            classes = _configured_classes(ds)
            empty_dropped = (not ds.get('test_mode', False)
                             and (ds.get('filter_cfg') or {}).get('filter_empty_gt', False))
            if ann_file:
                check_coco_annotation_file(_resolve(data_root, ann_file), where, classes,
                                           must_have_objects=empty_dropped)
            img_dir = (ds.get('data_prefix') or {}).get('img')
            if img_dir is not None and not osp.isdir(_resolve(data_root, img_dir)):
                raise DatasetPathError(
                    f'{where}: image folder {_resolve(data_root, img_dir)!r} does not exist.')
        evaluator_key = key.replace('_dataloader', '_evaluator')
        for ann_file in _evaluator_ann_files(cfg.get(evaluator_key)):
            check_coco_annotation_file(ann_file, evaluator_key, classes)
