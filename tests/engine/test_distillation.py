"""Distillation from the dense network: a KD term on sparse steps only."""
import json

import pytest
import torch

from conftest import tiny_cocktail_config, train
from mmsparse.core.methods.distill import sigmoid_kd, softmax_kd


def test_kd_terms_are_zero_for_identical_teacher_and_positive_otherwise():
    logits = torch.randn(6, 5)
    assert softmax_kd(logits, logits).abs() < 1e-6
    assert softmax_kd(logits, torch.randn(6, 5)) > 0
    same = sigmoid_kd(logits, logits)
    assert sigmoid_kd(logits, -logits) > same


def test_kd_only_on_sparse_steps(tmp_path, tiny_data):
    cfg = tiny_cocktail_config(tmp_path / 'kd.py', 'distill=dict(weight=0.5)',
                               'loss_keys_hook', 'LossKeysHook', '''
        train_cfg = dict(max_iters=6, val_interval=1000)
    ''')
    work = tmp_path / 'w'
    train(cfg, work)
    rows = json.loads((work / 'loss_keys.json').read_text())
    assert len(rows) == 6
    for iteration, subnet, keys, kd in rows:
        if subnet == 'dense':
            assert 'loss_kd' not in keys, iteration
        else:
            assert 'loss_kd' in keys and kd > 0, iteration
    assert {r[1].split('@')[0] for r in rows} == {'dense', 'unstructured', 'channel', 'nm'}


def test_distillation_rejects_a_bad_weight():
    from mmsparse.models.distill import DenseDistiller
    with pytest.raises(ValueError, match=r'weight must be in \(0, 1\]'):
        DenseDistiller(None, None, weight=1.5)
