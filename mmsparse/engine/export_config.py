"""The config of an exported subnet: what plain MMDetection runs, without mmsparse.

``tools/export_subnet.py`` writes it beside every exported model. mmsparse's own types are
replaced by MMDetection's: dataset classes by their MMDetection base class (with their
metainfo), mmsparse hooks, loops and imports dropped, optimizer wrappers mapped to
MMDetection's own.
"""
import copy
import os.path as osp

from mmdet.registry import DATASETS
from mmengine.config import Config

from mmsparse.core.export.deploy import ExportError, plain_value


def _is_mmsparse(value):
    return isinstance(value, str) and value.startswith('mmsparse.')


def _plain_dataset(dataset, renamed):
    """Replace an mmsparse dataset type by its nearest MMDetection base class + metainfo;
    record the replacement in ``renamed``."""
    if isinstance(dataset, dict):
        if _is_mmsparse(dataset.get('type')):
            cls = DATASETS.get(dataset['type'])
            base = next((c for c in cls.__mro__[1:] if c.__module__.startswith('mmdet.')
                         and DATASETS.get(c.__name__) is c), None)
            if base is None:
                raise ExportError(f'dataset {dataset["type"]} has no MMDetection base class; '
                                  'the exported config would need mmsparse')
            renamed[dataset['type']] = base.__name__
            dataset['type'] = base.__name__
            dataset.setdefault('metainfo', plain_value(dict(cls.METAINFO)))
        for key in ('dataset', 'datasets'):
            if key in dataset:
                _plain_dataset(dataset[key], renamed)
    elif isinstance(dataset, (list, tuple)):
        for item in dataset:
            _plain_dataset(item, renamed)


def find_mmsparse_types(obj, path=''):
    """Yield ``'<key path>.type=<mmsparse type>'`` for every mmsparse type left in ``obj``."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == 'type' and _is_mmsparse(value):
                yield f'{path}.type={value}'
            yield from find_mmsparse_types(value, f'{path}.{key}' if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from find_mmsparse_types(value, f'{path}[{i}]')


# Top-level config keys mmengine's Runner (Runner.from_cfg) reads.
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'model_wrapper_cfg', 'runner_type',
    'custom_imports', 'compile', 'strategy'})


def plain_config(cfg, checkpoint=None):
    """A copy of ``cfg`` that plain MMDetection runs: mmsparse hooks, loops and imports
    dropped, optimizer wrappers and datasets mapped to MMDetection's own types."""
    cfg = Config(copy.deepcopy(cfg._cfg_dict.to_dict()))
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', None) or []
                        if not _is_mmsparse(h.get('type'))]
    for loop, plain in (('val_cfg', 'ValLoop'), ('test_cfg', 'TestLoop')):
        if _is_mmsparse((cfg.get(loop) or {}).get('type')):
            cfg[loop] = dict(type=plain, fp16=cfg[loop].get('fp16', False))
    wrapper = cfg.get('optim_wrapper') or {}
    if _is_mmsparse(wrapper.get('type')):
        amp = 'Amp' in wrapper['type']
        cfg.optim_wrapper = {k: v for k, v in wrapper.items() if k in (
            'optimizer', 'clip_grad', 'paramwise_cfg', 'accumulative_counts', 'loss_scale')}
        cfg.optim_wrapper['type'] = 'AmpOptimWrapper' if amp else 'OptimWrapper'
    if cfg.get('custom_imports'):
        imports = cfg.custom_imports.get('imports', [])
        imports = [imports] if isinstance(imports, str) else imports
        kept = [i for i in imports if i != 'mmsparse' and not i.startswith('mmsparse.')]
        if kept:
            cfg.custom_imports['imports'] = kept
        else:
            cfg.pop('custom_imports')
    renamed = {}
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            _plain_dataset(cfg[key].get('dataset'), renamed)
    for key, value in list(cfg.items()):  # e.g. the base config's `dataset_type` variable
        if isinstance(value, str) and value in renamed:
            cfg[key] = renamed[value]
    for key in list(cfg.keys()):
        # Top-level helper variables (e.g. `cocktail_val_cfg`, interpolated into val_cfg by
        # the config itself) are not read by the Runner: drop the ones naming mmsparse types.
        if key not in RUNNER_KEYS and list(find_mmsparse_types({key: cfg[key]})):
            cfg.pop(key)
    left = list(find_mmsparse_types(cfg._cfg_dict.to_dict()))
    if left:
        raise ExportError(f'the exported config would still need mmsparse: {left}')
    cfg.load_from = checkpoint
    return cfg


def slimmed_model_config(plain, narrowed):
    """Make ``plain``'s model build a channel-slimmed subnet, in place.

    ``model`` becomes ``dict(type='mmsparse.SlimmedDetector', detector_type=<its type>,
    narrowed=narrowed, **<its other keys>)``: the original keys stay where tools read them
    (``cfg.model.backbone``), and the registered builder narrows the listed modules after
    building the detector. The one mmsparse type left needs mmsparse installed, so it is
    imported explicitly (the registry's ``locations`` would find it too).
    """
    model = dict(plain.model)
    detector_type = model.pop('type')
    if _is_mmsparse(detector_type):
        raise ExportError(f'the detector type {detector_type} is mmsparse\'s own; a slimmed '
                          'export builds an MMDetection detector')
    plain.model = dict(type='mmsparse.SlimmedDetector', detector_type=detector_type,
                       narrowed=narrowed, **model)
    imports = list((plain.get('custom_imports') or {}).get('imports', []))
    plain.custom_imports = dict(imports=['mmsparse', *imports], allow_failed_imports=False)
    return plain


def check_builds(plain, state_dict):
    """Build ``plain.model`` as a test run would and load ``state_dict`` into it strictly,
    so a config that cannot rebuild the exported model fails the export, not its user."""
    from mmdet.registry import MODELS
    with MODELS.switch_scope_and_registry('mmdet') as registry:
        model = registry.build(copy.deepcopy(plain.model))
    built = model.state_dict()
    wrong = sorted(k for k, v in state_dict.items()
                   if k in built and tuple(built[k].shape) != tuple(v.shape))
    missing, unexpected = sorted(set(built) - set(state_dict)), sorted(set(state_dict) - set(built))
    if wrong or missing or unexpected:
        raise ExportError(f'the exported config does not rebuild the slimmed model: shapes '
                          f'differ for {wrong[:5]}, missing {missing[:5]}, unexpected '
                          f'{unexpected[:5]}')
    model.load_state_dict(state_dict, strict=True)


def exported_config_path(out):
    """The plain config written beside an exported model: ``<out without .pth>.py``."""
    return osp.splitext(out)[0] + '.py'


def export_paths(out, subnets):
    """The model files an export writes: ``out`` itself for one subnet named by a ``.pth``
    path, else one ``<subnet>.pth`` per subnet in folder ``out`` (``:`` becomes ``-``)."""
    if len(subnets) > 1 or not out.endswith('.pth'):
        return [osp.join(out, s.name.replace(':', '-') + '.pth') for s in subnets]
    return [out]
