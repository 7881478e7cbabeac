"""The paper's multi-stage recipe: each stage rewinds the weights and trains its own ratios."""
import textwrap

import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import REPO, TINY_CONFIG, assert_ok, run_tool
from mmsparse.core import is_mask_key


def test_two_stages_rewind_and_regenerate(tmp_path, tiny_data):
    cfg = tmp_path / 'ms.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py']
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.3',
                                                             'unstructured@0.6']),
            dict(type='mmsparse.SparseCocktailHook'),
        ]
        train_cfg = dict(max_iters=4, val_interval=1000)
        log_processor = dict(window_size=1)
    '''))
    work = tmp_path / 'ms'
    result = run_tool(['tools/cocktail_multistage.py', cfg, '--work-dir', work, '--stages', '2',
                       '--rewind-iter', '2'])
    assert_ok(result)
    log = result.stdout + result.stderr
    stage1, stage2 = log.split('[multistage] stage 2/2')
    assert 'trained unstructured@0.30' in stage1 and 'trained unstructured@0.60' not in stage1
    assert 'trained unstructured@0.60' in stage2 and 'trained unstructured@0.30' not in stage2
    start = torch.load(work / 'stage_2/rewound_with_masks.pth', weights_only=True)['state_dict']
    rewind = torch.load(work / 'stage_1/iter_2.pth', weights_only=True)['state_dict']
    final1 = torch.load(work / 'stage_1/iter_4.pth', weights_only=True)['state_dict']
    weights = [k for k in start if not is_mask_key(k) and k.endswith('.weight')]
    assert all(torch.equal(start[k], rewind[k]) for k in weights)  # rewound
    masks = [k for k in start if k.endswith('mask_unstructured_level')]
    assert any(not torch.equal(start[k], final1[k]) for k in masks)  # regenerated
    assert (work / 'stage_2/iter_4.pth').exists()
