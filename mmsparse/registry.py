"""mmsparse's registries: children of MMDetection's, which are children of mmengine's.

Parenting to MMDetection's registries (scope ``mmdet``) lets a component built under the
``mmsparse`` scope still find MMDetection's transforms, models and metrics by their bare
names. ``locations`` lets mmengine import the modules that register into each registry when a
config names ``type='mmsparse.X'``, so no ``custom_imports`` is needed (it still works).
Registries are added here as the components that fill them land.
"""
from mmdet.registry import DATASETS as MMDET_DATASETS
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import LOOPS as MMDET_LOOPS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import OPTIM_WRAPPERS as MMDET_OPTIM_WRAPPERS
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmengine.registry import Registry

DATASETS = Registry('dataset', parent=MMDET_DATASETS, scope='mmsparse',
                    locations=['mmsparse.datasets'])
TRANSFORMS = Registry('transform', parent=MMDET_TRANSFORMS, scope='mmsparse',
                      locations=['mmsparse.datasets'])
HOOKS = Registry('hook', parent=MMDET_HOOKS, scope='mmsparse',
                 locations=['mmsparse.engine.hooks'])
LOOPS = Registry('loop', parent=MMDET_LOOPS, scope='mmsparse',
                 locations=['mmsparse.engine.runner'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMDET_OPTIM_WRAPPERS, scope='mmsparse',
                          locations=['mmsparse.engine.optimizers'])
# Builders of exported models (``type='mmsparse.SlimmedDetector'``, a channel-slimmed subnet).
MODELS = Registry('model', parent=MMDET_MODELS, scope='mmsparse',
                  locations=['mmsparse.models.slimmed_detector'])
