"""Stage checkpoints from co-training, then network interpolation on a held-out split."""
import json
import textwrap

import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import REPO, TINY_CONFIG, assert_ok, run_tool, train


def test_stage_checkpoints_and_greedy_interpolation(tmp_path, tiny_data):
    cfg = tmp_path / 'stages.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py']
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.3',
                                                             'unstructured@0.6', 'nm@2:4']),
            dict(type='mmsparse.SparseCocktailHook', num_stages=3,
                 save_stage_checkpoints=True),
        ]
        train_cfg = dict(max_iters=8, val_interval=1000)
    '''))
    work = tmp_path / 'run'
    train(cfg, work)
    stages = sorted(p.name for p in work.glob('stage_*.pth'))
    assert stages == ['stage_1.pth', 'stage_2.pth', 'stage_3.pth']
    out = tmp_path / 'interp.pth'
    result = run_tool(['tools/analysis_tools/interpolate_stages.py', cfg, work, '--heldout', '4',
                       '--subnets', 'dense,nm@2:4', '--grid', '0.25,0.75', '--out', out])
    assert_ok(result)
    state = torch.load(out, weights_only=True)
    history = state['meta']['interpolation']
    assert [h[0] for h in history] == [2, 3] and all(h[1] in (0.25, 0.75) for h in history)
    split = json.loads((work / 'interpolation/heldout_train_split.json').read_text())
    train_ann = json.loads((tiny_data / 'annotations/instances_train.json').read_text())
    assert [im['file_name'] for im in split['images']] == [im['file_name']
                                                           for im in train_ann['images'][-4:]]
    assert all(im['file_name'].startswith('train/') for im in split['images'])
    last = torch.load(work / 'stage_3.pth', weights_only=True)['state_dict']
    key = 'backbone.layer1.0.conv1.weight'
    assert not torch.equal(state['state_dict'][key], last[key])  # really averaged
    mask_key = 'backbone.layer1.0.conv1.mask_nm_bits'
    assert torch.equal(state['state_dict'][mask_key], last[mask_key])
