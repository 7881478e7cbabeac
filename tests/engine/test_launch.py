"""The launch helpers shared by tools/train.py and tools/test.py."""
import torch.distributed as dist

from mmsparse.engine.launch import shutdown_distributed


def test_shutdown_destroys_the_process_group_and_is_then_a_no_op(tmp_path):
    # A live gloo group left to interpreter shutdown can abort the process after its work
    # is saved; the tools end it with shutdown_distributed().
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}',
                            rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        shutdown_distributed()
        assert not dist.is_initialized()
        shutdown_distributed()  # no group: nothing to do, no error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
