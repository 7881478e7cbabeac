"""Train a few iterations, then ``--resume`` from a checkpoint and continue (torch >= 2.6)."""
import pickle

import pytest
import torch

from conftest import TINY_CONFIG, assert_ok, run_tool


class NotAllowListed:
    """A class no allow-list names: loading it with weights_only=True must still fail."""


def test_train_then_resume_continues_from_the_checkpoint(tmp_path, tiny_data):
    work = tmp_path / 'work'
    first = run_tool(['tools/train.py', TINY_CONFIG, '--work-dir', work,
                      '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=100'])
    assert_ok(first)
    ckpt = work / 'iter_2.pth'
    # The resume file holds mmengine's message hub (HistoryBuffer, numpy values): it must
    # load with weights_only=True thanks to mmsparse's allow-list.
    import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 2 and 'optimizer' in state and 'message_hub' in state

    second = run_tool(['tools/train.py', TINY_CONFIG, '--work-dir', work, '--resume', ckpt,
                       '--cfg-options', 'train_cfg.max_iters=4'])
    assert_ok(second)
    log = second.stdout + second.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/4]' not in log
    final = torch.load(work / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert final['meta']['iter'] == 4
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log


def test_allow_list_does_not_disable_weights_only(tmp_path):
    import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
    path = tmp_path / 'evil.pth'
    torch.save({'x': NotAllowListed()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_history_buffers_pickle_plainly_outside_checkpoints():
    """The allow-list changes no pickling in the process: only the checkpoint dict being
    saved gets buffers without their bound methods."""
    import copy
    import copyreg
    import io

    from mmengine.logging.history_buffer import HistoryBuffer

    import mmsparse.engine  # noqa: F401
    from mmsparse.utils.checkpoint import portable_checkpoint
    assert HistoryBuffer not in copyreg.dispatch_table
    buffer = HistoryBuffer()
    buffer.update(2.0)
    assert 'statistics_methods' in copy.deepcopy(buffer).__getstate__()
    checkpoint = dict(message_hub=dict(log_scalars={'train/loss': buffer}))
    with pytest.raises(pickle.UnpicklingError):  # as mmengine saves it: functions inside
        raw = io.BytesIO()
        torch.save(checkpoint, raw)
        raw.seek(0)
        torch.load(raw, weights_only=True)
    portable_checkpoint(checkpoint)
    raw = io.BytesIO()
    torch.save(checkpoint, raw)
    raw.seek(0)
    loaded = torch.load(raw, weights_only=True)['message_hub']['log_scalars']['train/loss']
    assert type(loaded) is HistoryBuffer and loaded.current() == 2.0
