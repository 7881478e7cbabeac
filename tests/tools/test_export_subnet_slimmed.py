"""tools/export_subnet.py on channel subnets: the slimmed state dict + a config that
rebuilds it (mmsparse.SlimmedDetector), the opt-in pickled module, --divisor, and the
requests and layers it refuses before writing anything."""
import copy
import json

import pytest
import torch

import export_fixtures
from conftest import load_tool
from export_fixtures import export_api, export_args

# the shared fixtures (each computed once per session, see export_fixtures)
sparse_checkpoint, in_checkpoint = export_fixtures.sparse_checkpoint, export_fixtures.in_checkpoint
exported, pickled = export_fixtures.exported, export_fixtures.pickled


@pytest.fixture(scope='module')
def loaded(sparse_checkpoint):
    """(config, model, network) of the sparse checkpoint, loaded in this process."""
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(str(sparse_checkpoint['cfg']))
    model, network, _ = export_api().load_sparse_detector(cfg, str(sparse_checkpoint['sparse']))
    return cfg, model, network


class Scaled(torch.nn.Module):
    """Own weights whose shapes no width attribute implies: narrowing cannot rebuild it."""

    def __init__(self, c):
        super().__init__()
        self.out_channels, self.scale = c, torch.nn.Parameter(torch.ones(c))


@pytest.fixture
def unrebuildable_layer(monkeypatch):
    """Make every slimmed model seem to hold a Scaled layer where layer1.0.conv1 was."""
    from mmsparse.engine import subnet_export
    real = subnet_export.narrowed_spec

    def with_custom_layer(reference, slimmed):
        slimmed = copy.deepcopy(slimmed)
        slimmed.backbone.layer1[0].conv1 = Scaled(12)
        return real(reference, slimmed)

    monkeypatch.setattr(subnet_export, 'narrowed_spec', with_custom_layer)


def test_slimmed_export_builds_from_its_config_alone(exported):
    """A fresh Config.fromfile + MMDetection's MODELS.build: no mmsparse object passed in."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    folder, _ = exported
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(folder / 'channel@0.25.py'))
    assert cfg.model.backbone.type == 'ResNet'  # the original keys stay where tools read them
    assert cfg.custom_imports == dict(imports=['mmsparse'], allow_failed_imports=False)
    assert cfg.load_from == str(folder / 'channel@0.25.pth')
    model = MODELS.build(cfg.model)
    state = torch.load(folder / 'channel@0.25.pth', weights_only=True)['state_dict']
    model.load_state_dict(state, strict=True)
    assert type(model.backbone.layer1[0].conv1) is torch.nn.Conv2d


def test_pickled_module_is_opt_in(pickled):
    out, log = pickled
    slim = torch.load(out, weights_only=False)
    info = slim['meta']['mmsparse']
    assert info['format'] == 'pickled-module' and 'narrowed_modules' not in info
    assert info['params'] == sum(p.numel() for p in slim['model'].parameters())
    assert slim['model'].backbone.layer1[0].conv1.out_channels == 12  # 16 - 25 %
    assert type(slim['model'].backbone.layer1[0].conv1) is torch.nn.Conv2d
    assert 'mmsparse.' not in out.with_suffix('.py').read_text().replace('mmsparse tools/', '')
    assert "model = torch.load(" in log and 'weights_only=False' in log  # the recipe


def test_mmsparse_test_tool_runs_the_exported_config(exported, in_checkpoint, tmp_path):
    folder, _ = exported
    load_tool('tools/test.py').main([str(folder / 'channel@0.25.py'),
                                     str(folder / 'channel@0.25.pth'), '--work-dir',
                                     str(tmp_path / 'work'), '--out', str(tmp_path / 'm.json')])
    metrics = json.loads((tmp_path / 'm.json').read_text())['dense']
    inside = in_checkpoint['channel@0.25']
    keys = [k for k in metrics if k.startswith('coco/')]
    assert len(keys) == 12
    assert all(abs(metrics[k] - inside[k]) <= 1e-3 for k in keys)


def test_unrebuildable_slimmed_layer_fails_the_export_by_name(loaded, sparse_checkpoint,
                                                                tmp_path, unrebuildable_layer):
    """A narrowed layer the config's builder could not re-create stops the export, naming
    the layer, before any file is written."""
    from mmsparse.core import parse_subnet
    tool = export_api()
    cfg, model, network = loaded
    with pytest.raises(tool.ExportError, match=r'cannot rebuild the narrowed layer '
                       r'backbone\.layer1\.0\.conv1 \(Scaled\).*--pickle-module'):
        tool.write_one(export_args(sparse_checkpoint['sparse']), cfg, model, network,
                       parse_subnet('channel@0.25'), (), str(tmp_path / 'c.pth'), {}, [])
    assert not list(tmp_path.iterdir())


def test_a_failing_subnet_leaves_no_partial_export(sparse_checkpoint, tmp_path,
                                                   unrebuildable_layer):
    """Several subnets: nm@2:4 exports fine, then the channel subnet fails; its error stops
    the run and neither subnet's files (nor their temporary files) are left."""
    script = export_api().script
    folder = tmp_path / 'out'
    with pytest.raises(export_api().ExportError, match='cannot rebuild the narrowed layer'):
        script.main([str(sparse_checkpoint['cfg']), str(sparse_checkpoint['sparse']),
                     '--subnet', 'nm@2:4,channel@0.25', '--out', str(folder)])
    assert not list(folder.iterdir())


def test_channel_options_need_a_channel_subnet(sparse_checkpoint, tmp_path):
    """--divisor and --pickle-module change nothing without a channel subnet: refused before
    anything is loaded (for --subnet all once the checkpoint's names are read)."""
    tool = export_api()
    script = tool.script
    for argv, match in ((['--subnet', 'nm@2:4', '--divisor', '8'], 'none is requested'),
                        (['--subnet', 'channel@0.25', '--divisor', '0'], 'positive int'),
                        (['--subnet', 'nm@2:4,unstructured@0.3', '--pickle-module'],
                         r'--pickle-module applies to channel subnets .*\(nm@2:4, '
                         r'unstructured@0.30\)')):
        with pytest.raises(tool.ExportError, match=match):
            script.check_request(script.parse_args(['c.py', 'x.pth', '--out', 'o.pth', *argv]))
    script.check_request(script.parse_args(  # a channel subnet among them: fine
        ['c.py', 'x.pth', '--out', 'o.pth', '--subnet', 'nm@2:4', '--also', 'channel@0.25',
         '--pickle-module']))
    folder = tmp_path / 'out'
    with pytest.raises(tool.ExportError, match=r'--pickle-module applies .*\(dense\)'):
        script.main([str(sparse_checkpoint['cfg']), str(sparse_checkpoint['dense']),
                     '--subnet', 'all', '--pickle-module', '--out', str(folder)])
    assert not folder.exists()


def test_divisor_rounds_the_slimmed_widths_up(loaded, sparse_checkpoint, tmp_path):
    """--divisor 5: 12 of 16 channels become 15 (the strongest removed ones back), recorded
    in the meta; the checkpoint + config still rebuild the model."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from mmsparse.core import parse_subnet
    tool = export_api()
    cfg, model, network = loaded
    out = tmp_path / 'c.pth'
    info, config = tool.write_one(export_args(sparse_checkpoint['sparse'], divisor=5), cfg,
                                  model, network, parse_subnet('channel@0.25'), (), str(out),
                                  {}, [])
    state = torch.load(out, weights_only=True)['state_dict']
    assert info['divisor'] == 5 and info['restored_channels'] > 0
    assert state['backbone.layer1.0.conv1.weight'].shape[0] == 15
    exported_cfg = Config.fromfile(config)
    built = MODELS.build(exported_cfg.model)
    built.load_state_dict(state, strict=True)
    full = dict(model.named_modules())
    widths = {n: (w['out_channels'], full[n].out_channels)
              for n, w in exported_cfg.model.narrowed.items() if 'out_channels' in w}
    assert widths and all(w % 5 == 0 or w == dense for w, dense in widths.values()), widths


def test_divisor_restoring_every_channel_exports_the_plain_detector(loaded, sparse_checkpoint,
                                                                    tmp_path):
    """A divisor no width reaches puts every removed channel back: nothing is narrowed, so
    the config keeps MMDetection's own detector type and the tool says no mmsparse is needed
    to load it."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from mmsparse.core import parse_subnet
    tool = export_api()
    cfg, model, network = loaded
    out = tmp_path / 'c.pth'
    info, config = tool.write_one(export_args(sparse_checkpoint['sparse'], divisor=4096), cfg,
                                  model, network, parse_subnet('channel@0.25'), (), str(out),
                                  {}, [])
    assert info['slimmed'] and info['narrowed_modules'] == 0 and info['restored_channels'] > 0
    exported_cfg = Config.fromfile(config)
    assert exported_cfg.model.type == 'MaskRCNN' and 'narrowed' not in exported_cfg.model
    assert 'mmsparse' not in str(exported_cfg.get('custom_imports'))
    assert 'Loads with MMDetection alone' in open(config).read()
    recipe = tool.script.how_to_load(info, str(out), config)
    assert 'plain MMDetection (no mmsparse)' in recipe and 'mmsparse must be' not in recipe
    state = torch.load(out, weights_only=True)['state_dict']
    MODELS.build(exported_cfg.model).load_state_dict(state, strict=True)
