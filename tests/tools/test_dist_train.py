"""Two processes with gloo on the CPU train the tiny detector through tools/dist_train.sh."""
import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import TINY_CONFIG, assert_ok, run_tool


def test_two_process_gloo_training_agrees_on_weights(tmp_path, tiny_data):
    cfg = tmp_path / 'dist_tiny.py'
    cfg.write_text(f"_base_ = ['{TINY_CONFIG}']\n"
                   "custom_imports = dict(imports=['rank_weight_dump_hook'])\n"
                   "custom_hooks = [dict(type='RankWeightDumpHook')]\n"
                   "train_cfg = dict(max_iters=3, val_interval=100)\n")
    work = tmp_path / 'work'
    result = run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work],
                      env={'PORT': '29613'})
    assert_ok(result)
    r0 = torch.load(work / 'rank0_params.pth', weights_only=True)
    r1 = torch.load(work / 'rank1_params.pth', weights_only=True)
    assert r0['wrapper'] == r1['wrapper'] == 'MMDistributedDataParallel'
    assert r0['iter'] == r1['iter'] == 3
    assert r0['params'].keys() == r1['params'].keys()
    for name, p0 in r0['params'].items():
        assert torch.equal(p0, r1['params'][name]), f'{name} differs between ranks'
    # Training really moved the weights (both ranks started from rank 0's broadcast init).
    init = torch.load(work / 'iter_2.pth', weights_only=True)['state_dict']
    assert any(not torch.equal(init[k], r0['params'][k]) for k in r0['params'])
