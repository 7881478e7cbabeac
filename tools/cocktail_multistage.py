"""Sparse Cocktail's exact multi-stage recipe: prune, rewind, retrain, once per stage.

Stage 1 trains from scratch (saving the rewind point); every later stage s regenerates all
masks by unified mask generation from the previous stage's final weights, rewinds the
weights to the rewind point, and retrains the full schedule training only stage s's ratios
(``ratio_mode='current'``, dense pivot). With 10 stages this costs about 10 full training
runs (the paper's ~11x a dense run); mmsparse's recipes reach all ratios in one run
(``configs/_base_/sparsity/cocktail.py``, ``cocktail_paper.py``).

Example::

    python tools/cocktail_multistage.py \\
        configs/cocktail/mask-rcnn_r18_fpn_cocktail-paper_600it_shapes.py \\
        --work-dir work_dirs/multistage --stages 10 --rewind-iter 50

The tool refuses a ``--work-dir`` that already holds a multi-stage run (its stage configs)
unless ``--force`` is given, and never writes over the config it is given.
"""
import argparse
import subprocess
import sys
from pathlib import Path

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
from mmsparse.core import generate_masks, is_mask_key
from mmsparse.engine.hooks import SparseSubnetsHook
from mmsparse.engine.sparse_checkpoint import load_checkpoint_file
from mmsparse.models import sparsify_detector
from mmsparse.utils.safe_write import atomic_save, atomic_write_text, check_outputs

TOOLS = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='a co-training config (with SparseSubnetsHook)')
    p.add_argument('--work-dir', required=True)
    p.add_argument('--stages', type=int, default=10)
    p.add_argument('--rewind-iter', type=int, default=50,
                   help='iteration whose weights later stages restart from')
    p.add_argument('--force', action='store_true',
                   help='run again in a --work-dir that holds a multi-stage run (its files '
                   'are replaced; the config never is)')
    args = p.parse_args(argv)
    if args.stages < 1 or args.rewind_iter < 1:
        p.error('--stages and --rewind-iter must be >= 1')
    return args


def stage_hooks(cfg, stage, stages):
    """The config's hooks with the cocktail hook fixed to ``stage``."""
    hooks = []
    for hook in cfg.get('custom_hooks', []):
        hook = dict(hook)
        if 'SparseCocktailHook' in hook['type']:
            hook.update(fixed_stage=stage, num_stages=stages, ratio_mode='current')
        hooks.append(hook)
    return hooks


def masks_from(cfg, final_ckpt, rewind_ckpt, out):
    """Rewound weights with masks regenerated (UMG) from ``final_ckpt``'s weights."""
    register_all_modules()
    subnets_hook = next(h for h in cfg.custom_hooks if 'SparseSubnetsHook' in h['type'])
    hook = SparseSubnetsHook(**{k: v for k, v in subnets_hook.items() if k != 'type'})
    model = MODELS.build(cfg.model)
    final = load_checkpoint_file(final_ckpt)['state_dict']
    model.load_state_dict({k: v for k, v in final.items() if not is_mask_key(k)},
                          strict=False)
    network = sparsify_detector(model, hook.include, hook.exclude, hook.analysis_image_size,
                                sparsify_input_layers=hook.sparsify_input_layers,
                                sparsify_output_layers=hook.sparsify_output_layers)
    generate_masks(network, hook.subnets, hook.mask_spec)
    masks = {k: v for k, v in model.state_dict().items() if is_mask_key(k)}
    rewound = load_checkpoint_file(rewind_ckpt)['state_dict']
    state = {k: v for k, v in rewound.items() if not is_mask_key(k)}
    state.update(masks)
    atomic_save(dict(meta=dict(mmsparse_multistage=str(final_ckpt)), state_dict=state), out)


def main(argv=None):
    args = parse_args(argv)
    root = Path(args.work_dir)
    planned = [root / f'stage_{s}' / name for s in range(1, args.stages + 1)
               for name in ('stage_config.py', 'rewound_with_masks.pth')[:1 if s == 1 else 2]]
    check_outputs(planned, [args.config], args.force, '--work-dir')
    cfg = Config.fromfile(args.config)
    previous = None
    for stage in range(1, args.stages + 1):
        stage_dir = root / f'stage_{stage}'
        stage_dir.mkdir(parents=True, exist_ok=True)
        lines = [f'_base_ = [{str(Path(args.config).resolve())!r}]',
                 f'custom_hooks = {stage_hooks(cfg, stage, args.stages)!r}']
        if stage == 1:
            lines.append(f'default_hooks = dict(checkpoint=dict(interval={args.rewind_iter}))')
        else:
            start = stage_dir / 'rewound_with_masks.pth'
            masks_from(cfg, previous, root / 'stage_1' / f'iter_{args.rewind_iter}.pth', start)
            lines.append(f'load_from = {str(start)!r}')
        stage_cfg = stage_dir / 'stage_config.py'
        atomic_write_text(stage_cfg, '\n'.join(lines) + '\n')
        cmd = [sys.executable, str(TOOLS / 'train.py'), str(stage_cfg), '--work-dir',
               str(stage_dir)]
        print(f'[multistage] stage {stage}/{args.stages}: {" ".join(cmd)}', flush=True)
        subprocess.run(cmd, check=True)
        previous = max(stage_dir.glob('iter_*.pth'), key=lambda p: int(p.stem.split('_')[1]))
    print(f'[multistage] final checkpoint: {previous}')


if __name__ == '__main__':
    main()
