"""The cocktail configs: the recommended fragment reproduces the best measured shapes recipe
exactly, the paper's recipe keeps its options, options change by name (in a config and on
the command line), the fragment composes with configs that bring their own custom_hooks,
and every config path the docs cite exists."""
import json
import re
import shlex
import textwrap

import pytest
from mmengine.config import Config, DictAction

from conftest import REPO
from mmsparse.engine.config_options import merge_cfg_options

COCKTAIL = REPO / 'configs/cocktail'
FRAGMENT = REPO / 'configs/_base_/sparsity/cocktail.py'
PAPER_FRAGMENT = REPO / 'configs/_base_/sparsity/cocktail_paper.py'

# Frozen from the parsed configs before the chain of experiment configs was retired:
# custom_hooks of configs/cocktail/mask-rcnn_r18_fpn_cocktail-joint-split-ste-unlocked-nm2-
# dense2_shapes.py (the best measured recipe) ...
RECOMMENDED_HOOKS = [
    {'type': 'mmsparse.SparseSubnetsHook', 'subnets': 'cocktail'},
    {'type': 'mmsparse.SparseCocktailHook', 'joint_dense': {'split_batch': True, 'weight': 2.0},
     'patterns': ['unstructured', 'channel', 'nm', 'nm'], 'ratio_mode': 'unlocked',
     'stage_end': 0.8, 'straight_through': True},
    {'type': 'mmsparse.RNGStateHook'},
    {'type': 'mmsparse.SubnetBNStatsHook', 'batches': 20},
]
# ... and of configs/cocktail/mask-rcnn_r18_fpn_cocktail_shapes.py (the paper's recipe).
PAPER_HOOKS = [
    {'type': 'mmsparse.SparseSubnetsHook', 'subnets': 'cocktail'},
    {'type': 'mmsparse.SparseCocktailHook', 'ratio_mode': 'current', 'stage_end': 0.8},
    {'type': 'mmsparse.RNGStateHook'},
]
VAL_CFG = {'type': 'mmsparse.SubnetValLoop',
           'subnets': 'dense,unstructured@0.49,channel@0.27,nm@2:4'}
SPARSE_TYPES = {h['type'] for h in RECOMMENDED_HOOKS}


def _plain(value):
    """A parsed config value as JSON data (tuples become lists, ConfigDicts dicts), without
    the ``_scope_`` keys mmengine adds to what a config takes from an ``mmdet::`` base."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != '_scope_'}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(json.loads(json.dumps(value, default=repr)))


def _parsed(path):
    return Config.fromfile(str(path))


def _sparse_hooks(hooks):
    """The four hooks the recipes are defined by, in order (other hooks a fragment or a
    base may add, e.g. a loss check or EMA, are not part of the comparison)."""
    return [h for h in _plain(hooks) if h['type'] in SPARSE_TYPES]


@pytest.mark.parametrize('name, hooks', [
    ('mask-rcnn_r18_fpn_cocktail_600it_shapes.py', RECOMMENDED_HOOKS),
    ('mask-rcnn_r18_fpn_cocktail-paper_600it_shapes.py', PAPER_HOOKS),
])
def test_shapes_configs_reproduce_the_measured_recipes(name, hooks):
    cfg = _parsed(COCKTAIL / name)
    assert _sparse_hooks(cfg.custom_hooks) == hooks
    assert _plain(cfg.val_cfg) == VAL_CFG
    assert cfg.train_cfg.max_iters == 600 and cfg.train_dataloader.dataset.data_root == \
        'data/shapes/'


@pytest.mark.parametrize('path, hooks', [(FRAGMENT, RECOMMENDED_HOOKS),
                                         (PAPER_FRAGMENT, PAPER_HOOKS)])
def test_fragments_name_each_hook_and_define_no_key_of_a_detector_config(path, hooks):
    """Each hook is a named dict; the fragment sets no custom_hooks or val_cfg, so it can
    sit beside any base."""
    cfg = _parsed(path)
    assert 'custom_hooks' not in cfg and 'val_cfg' not in cfg
    assert _sparse_hooks(cfg.sparse_hooks) == hooks
    names = ['sparse_subnets', 'sparse_cocktail', 'rng_state', 'subnet_bn_stats'][:len(hooks)]
    assert [_plain(cfg[n]) for n in names] == hooks


def test_makefile_demo_trains_the_recommended_recipe():
    make = (REPO / 'Makefile').read_text()
    assert 'DEMO_CONFIG ?= configs/cocktail/mask-rcnn_r18_fpn_cocktail_600it_shapes.py' in make


@pytest.mark.parametrize('path', sorted(COCKTAIL.glob('*.py')), ids=lambda p: p.name)
def test_every_cocktail_config_holds_a_recipe_and_builds_its_hooks(path):
    from mmsparse.registry import HOOKS
    import mmsparse.engine  # noqa: F401  (registers the hooks)
    cfg = _parsed(path)
    sparse = _sparse_hooks(cfg.custom_hooks)
    if 'chase-spartan' in path.name:  # the paper's recipe with other mask sources
        assert sparse[1]['mask_sources'] == _plain(cfg.cocktail_mask_sources)
        sparse[1].pop('mask_sources')
    assert sparse == (PAPER_HOOKS if '-paper' in path.name else RECOMMENDED_HOOKS)
    assert _plain(cfg.val_cfg) == VAL_CFG
    for hook in sparse:
        HOOKS.build(dict(hook))  # misspelt options fail here


def test_changing_an_option_by_name_in_a_config(tmp_path):
    derived = tmp_path / 'derived.py'
    derived.write_text(textwrap.dedent(f'''
        _base_ = ['{COCKTAIL}/mask-rcnn_r18_fpn_cocktail_600it_shapes.py']
        sparse_cocktail = dict(_base_.sparse_cocktail, ratio_mode='current')
        subnet_bn_stats = dict(_base_.subnet_bn_stats, batches=5)
        custom_hooks = [_base_.sparse_subnets, sparse_cocktail, _base_.rng_state,
                        subnet_bn_stats]
    '''))
    hooks = _sparse_hooks(_parsed(derived).custom_hooks)
    assert hooks == [RECOMMENDED_HOOKS[0], dict(RECOMMENDED_HOOKS[1], ratio_mode='current'),
                     RECOMMENDED_HOOKS[2], dict(RECOMMENDED_HOOKS[3], batches=5)]


def test_cfg_options_on_a_hook_name_reach_custom_hooks():
    cfg = _parsed(COCKTAIL / 'mask-rcnn_r18_fpn_cocktail_600it_shapes.py')
    merge_cfg_options(cfg, {'sparse_cocktail.ratio_mode': 'current',
                            'sparse_cocktail.joint_dense.weight': 1.0,
                            'subnet_bn_stats.batches': 4, 'train_cfg.max_iters': 7})
    cocktail = dict(RECOMMENDED_HOOKS[1], ratio_mode='current',
                    joint_dense={'split_batch': True, 'weight': 1.0})
    assert _sparse_hooks(cfg.custom_hooks) == [RECOMMENDED_HOOKS[0], cocktail,
                                               RECOMMENDED_HOOKS[2],
                                               dict(RECOMMENDED_HOOKS[3], batches=4)]
    assert cfg.train_cfg.max_iters == 7 and _plain(cfg.sparse_cocktail) == cocktail


def test_cfg_options_on_a_name_the_hooks_no_longer_follow_fail(tmp_path):
    """A config that set custom_hooks without its named dict: the option would do nothing."""
    derived = tmp_path / 'positional.py'
    derived.write_text(textwrap.dedent(f'''
        _base_ = ['{COCKTAIL}/mask-rcnn_r18_fpn_cocktail_600it_shapes.py']
        custom_hooks = [_base_.sparse_subnets,
                        dict(_base_.sparse_cocktail, ratio_mode='current')]
    '''))
    cfg = _parsed(derived)
    with pytest.raises(ValueError, match=r'sparse_cocktail\.stage_end: custom_hooks holds a '
                       r'mmsparse.SparseCocktailHook that differs'):
        merge_cfg_options(cfg, {'sparse_cocktail.stage_end': 0.5})


@pytest.mark.parametrize('base, own', [
    ('mmdet::rtmdet/rtmdet-ins_s_8xb32-300e_coco.py', ['EMAHook', 'PipelineSwitchHook']),
    ('mmdet::yolox/yolox_s_8xb8-300e_coco.py',
     ['YOLOXModeSwitchHook', 'SyncNormHook', 'EMAHook']),
])
def test_the_fragment_composes_with_configs_that_bring_custom_hooks(tmp_path, base, own):
    """The documented line appends the cocktail's hooks to the base's own."""
    cfg_path = tmp_path / 'composed.py'
    cfg_path.write_text(textwrap.dedent(f'''
        _base_ = ['{base}', '{FRAGMENT}']
        custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
        val_cfg = _base_.cocktail_val_cfg
    '''))
    cfg = _parsed(cfg_path)
    assert [h['type'] for h in cfg.custom_hooks][:len(own)] == own
    assert _sparse_hooks(cfg.custom_hooks) == RECOMMENDED_HOOKS
    assert _plain(cfg.custom_hooks)[len(own):] == _plain(_parsed(FRAGMENT).sparse_hooks)
    assert _plain(cfg.val_cfg) == VAL_CFG


def _cited_configs(text):
    return set(re.findall(r'(?<![\w/])configs/[\w./-]+?\.py', text))


def test_every_config_the_docs_cite_exists():
    """README, docs, Makefile, tools and benchmarks name only configs that exist; the lab
    notebooks may name retired ones only through their table of retired configs."""
    paths = [REPO / 'README.md', REPO / 'Makefile', *REPO.glob('docs/*.md'),
             *REPO.glob('benchmarks/*.py'), *REPO.glob('benchmarks/results/*.json'),
             *REPO.glob('tools/**/*.py')]
    missing = {str(p.relative_to(REPO)): sorted(c for c in _cited_configs(p.read_text())
                                                if not (REPO / c).exists())
               for p in paths}
    assert not {k: v for k, v in missing.items() if v}
    for note in REPO.glob('docs/notes/*.md'):
        text = note.read_text()
        retired = text.split('## Retired configs', 1)[1].split('\n## ', 1)[0] \
            if '## Retired configs' in text else ''
        names = {c.rsplit('/', 1)[-1] for c in _cited_configs(retired)}
        gone = {c for c in _cited_configs(text) if not (REPO / c).exists()}
        assert all(c.rsplit('/', 1)[-1] in names for c in gone), (note.name, gone - names)


# The SparseCocktailHook options of each retired experiment config, frozen from the parsed
# configs before they were deleted (hooks: SparseSubnetsHook('cocktail'), this, RNGStateHook,
# and for the -nm2 ones SubnetBNStatsHook(batches=20)). What the docs cite stays reproducible.
_MS_CHASE = {'channel': {'type': 'chase', 'beta': 0.3}}
_MS_SPARTAN = {'unstructured': {'type': 'spartan', 'beta_start': 1.0, 'beta_end': 20.0}}
_SPLIT = {'joint_dense': {'split_batch': True}}
_PAPER = {'ratio_mode': 'current', 'stage_end': 0.8}
_NM2 = {**_SPLIT, 'patterns': ['unstructured', 'channel', 'nm', 'nm'], 'ratio_mode': 'unlocked',
        'stage_end': 0.8, 'straight_through': True}
RETIRED = {
    'mask-rcnn_r18_fpn_cocktail_shapes.py': _PAPER,
    'mask-rcnn_r18_fpn_cocktail-unlocked_shapes.py': dict(_PAPER, ratio_mode='unlocked'),
    'mask-rcnn_r18_fpn_cocktail-kd_shapes.py': dict(_PAPER, distill={'weight': 0.5}),
    'mask-rcnn_r18_fpn_cocktail-ste_shapes.py': dict(_PAPER, straight_through=True),
    'mask-rcnn_r18_fpn_cocktail-joint_shapes.py': dict(_PAPER, joint_dense=True),
    'mask-rcnn_r18_fpn_cocktail-joint-split_shapes.py': {**_PAPER, **_SPLIT},
    'mask-rcnn_r18_fpn_cocktail-joint-split-ste_shapes.py': {**_PAPER, **_SPLIT,
                                                             'straight_through': True},
    'mask-rcnn_r18_fpn_cocktail-joint-split-ste-unlocked_shapes.py': {
        **_SPLIT, 'ratio_mode': 'unlocked', 'stage_end': 0.8, 'straight_through': True},
    # the reproduction spells out the dense weight's default
    'mask-rcnn_r18_fpn_cocktail-joint-split-ste-unlocked-nm2_shapes.py': dict(
        _NM2, joint_dense={'split_batch': True, 'weight': 1.0}),
    'mask-rcnn_r18_fpn_cocktail-joint-split-ste-unlocked-nm2-dense2_shapes.py': dict(
        _NM2, joint_dense={'split_batch': True, 'weight': 2.0}),
    'mask-rcnn_r18_fpn_cocktail-chase_shapes.py': dict(_PAPER, mask_sources=_MS_CHASE),
    'mask-rcnn_r18_fpn_cocktail-spartan_shapes.py': dict(_PAPER, mask_sources=_MS_SPARTAN),
    'mask-rcnn_r18_fpn_cocktail-chase-spartan_shapes.py': dict(_PAPER, mask_sources={
        **_MS_CHASE, 'unstructured': dict(_MS_SPARTAN['unstructured'], freeze_at=None,
                                          through_mask=True)}),
}
NOTES = REPO / 'docs/notes/2026-12-05-shapes-experiments.md'


def _retired_table():
    """{retired config name: (config path, --cfg-options text)} from the notebook's table."""
    text = NOTES.read_text().split('## Retired configs', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| `configs/cocktail/([^`]+)` \| `([^`]+)` \| (.+) \|$', text, re.M)
    return {old: (new, '' if opts == '(none)' else opts.strip('`')) for old, new, opts in rows}


def test_the_notebook_reproduces_every_retired_config():
    table = _retired_table()
    assert sorted(table) == sorted(RETIRED)
    parser = DictAction(option_strings=['--cfg-options'], dest='cfg_options', nargs='+')
    for old, (new, opts) in table.items():
        cfg = _parsed(REPO / new)
        if opts:
            namespace = type('Namespace', (), {})()
            parser(None, namespace, shlex.split(opts))
            merge_cfg_options(cfg, namespace.cfg_options)
        expected = [RECOMMENDED_HOOKS[0], dict(type='mmsparse.SparseCocktailHook',
                                               **RETIRED[old]), RECOMMENDED_HOOKS[2]]
        if '-nm2' in old:
            expected.append(RECOMMENDED_HOOKS[3])
        assert _sparse_hooks(cfg.custom_hooks) == expected, old
