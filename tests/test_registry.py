"""``type='mmsparse.X'`` resolves from configs scoped to mmdet, with or without custom_imports."""
import textwrap

from conftest import TINY_DATA, assert_ok, run_tool

BUILD = textwrap.dedent('''
    import sys
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope, init_default_scope
    cfg = Config(dict(default_scope='mmdet', {extra}
                      dataset=dict(type='mmsparse.ShapesDataset', data_root='{root}/',
                                   ann_file='annotations/instances_val.json',
                                   data_prefix=dict(img=''), test_mode=True,
                                   pipeline=[dict(type='LoadImageFromFile')])))
    if 'custom_imports' in cfg:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    else:
        assert 'mmsparse' not in sys.modules
    init_default_scope(cfg.default_scope)
    ds = DATASETS.build(cfg.dataset)
    print(type(ds).__module__, type(ds).__name__, len(ds), ds.metainfo['classes'][0])
''')


def _run(tmp_path, extra, tiny_data):
    script = tmp_path / 'build.py'
    script.write_text(BUILD.format(extra=extra, root=tiny_data))
    return run_tool([script])


def test_scoped_type_needs_no_custom_imports(tmp_path, tiny_data):
    result = _run(tmp_path, '', tiny_data)
    assert_ok(result)
    assert 'mmsparse.datasets.shapes_dataset ShapesDataset 4 circle' in result.stdout


def test_scoped_type_with_custom_imports(tmp_path, tiny_data):
    result = _run(tmp_path, "custom_imports=dict(imports=['mmsparse']),", tiny_data)
    assert_ok(result)
    assert 'ShapesDataset 4 circle' in result.stdout
