"""Run an ONNX export of a detector in ONNX Runtime, with MMDetection's post-processing.

:class:`OrtDetector` takes a detector module only for its post-processing code (anchor
decoding, NMS, RoIAlign, mask pasting: MMDetection's PyTorch code, configured by the model's
``test_cfg``) and replaces the exported tensor parts (see ``onnx_export``) by ONNX Runtime
sessions, so ``predict`` returns the ``DetDataSample`` objects the torch model returns. The
module's own weights are not used: the unslimmed model the config builds serves a channel
subnet's export as well as the slimmed one.
"""
import copy
import os.path as osp
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from mmsparse.deploy.onnx_export import detector_kind, read_manifest, unflatten_outputs


def _session(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


class OrtDetector:
    """A detector whose tensor parts run in ONNX Runtime (CPU).

    Args:
        model: An MMDetection detector of the exported architecture's type (e.g. built from
            the config); deep-copied, its RoI heads' ``forward`` replaced by the exported
            graphs. Its weights are not used.
        onnx_dir: A folder written by ``export_onnx`` (``manifest.json`` and the graphs).
        threads: ONNX Runtime intra-op threads (0: its default).

    After each :meth:`predict`, :attr:`last_timings` holds seconds spent: ``'features'``,
    ``'bbox_head'``, ``'mask_head'`` (ONNX Runtime runs, summed over the calls), ``'ort'``
    (their sum) and ``'total'`` (the whole ``predict``, post-processing included).
    """

    def __init__(self, model, onnx_dir, threads=0):
        self.manifest = read_manifest(onnx_dir)
        self.model = copy.deepcopy(model).cpu().eval()
        self.kind = detector_kind(self.model)
        if self.kind != self.manifest['kind']:
            raise ValueError(f'{onnx_dir}: a {self.manifest["kind"]} export, but the model '
                             f'({type(self.model).__name__}) is {self.kind}')
        graphs = self.manifest['graphs']
        self.sessions = {name: _session(osp.join(onnx_dir, g['file']), threads)
                         for name, g in graphs.items()}
        self.input_shape = tuple(graphs['features']['input_shape'])
        self.last_timings = {}
        if self.kind == 'two_stage':
            roi_head = self.model.roi_head
            if roi_head.with_mask != ('mask_head' in graphs):
                raise ValueError(f'{onnx_dir}: mask head exported: {"mask_head" in graphs}, '
                                 f'but the model has one: {roi_head.with_mask}')
            self._replace_forward(roi_head.bbox_head, 'bbox_head')
            if roi_head.with_mask:
                self._replace_forward(roi_head.mask_head, 'mask_head')

    @classmethod
    def from_dir(cls, onnx_dir, threads=0):
        """An OrtDetector of an export folder alone, its post-processing model built from the
        ``config.py`` the export tool wrote there."""
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        register_all_modules()
        cfg = Config.fromfile(osp.join(onnx_dir, 'config.py'))
        if cfg.get('model') is None:
            raise ValueError(f'{onnx_dir}/config.py has no model entry; build the detector '
                             'yourself and pass it to OrtDetector(model, onnx_dir)')
        return cls(MODELS.build(cfg.model), onnx_dir, threads)

    # --- ONNX Runtime calls -------------------------------------------------------------
    def _run(self, name, array):
        start = time.perf_counter()
        outs = self.sessions[name].run(None, {self.manifest['graphs'][name]['inputs'][0]:
                                              np.ascontiguousarray(array, dtype=np.float32)})
        self.last_timings[name] = self.last_timings.get(name, 0.0) + (
            time.perf_counter() - start)
        return outs

    def _replace_forward(self, head, name):
        def forward(_, x):
            outs = [torch.from_numpy(o) for o in self._run(name, x.detach().cpu().numpy())]
            return outs[0] if len(outs) == 1 else tuple(outs)
        head.forward = types.MethodType(forward, head)

    def pad(self, inputs):
        """``inputs`` (N, 3, h, w) zero-padded at the bottom and right to the exported size
        (what MMDetection's data preprocessor does to batch images of several sizes)."""
        _, _, h, w = self.input_shape
        ih, iw = inputs.shape[-2:]
        if ih > h or iw > w:
            raise ValueError(f'input of {ih}x{iw} pixels is larger than the exported '
                             f'{h}x{w}; export again with --shape {ih} {iw} (or larger)')
        return F.pad(inputs, (0, w - iw, 0, h - ih)) if (ih, iw) != (h, w) else inputs

    def run_features(self, inputs):
        """The features graph on one preprocessed image: ``inputs`` is a ``(1, 3, H, W)``
        array or tensor of the exported size; returns ONNX Runtime's output arrays (neck
        levels first for two-stage detectors, then the dense head's outputs). Timing this
        call measures ONNX Runtime alone."""
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.detach().cpu().numpy()
        return self._run('features', inputs)

    def features(self, inputs):
        """``(neck levels, dense head outputs)`` as torch tensors for a batch ``inputs``
        (N, 3, h, w): one features-graph run per image, outputs concatenated."""
        inputs = self.pad(inputs.float())
        runs = [self.run_features(inputs[i:i + 1]) for i in range(inputs.shape[0])]
        flat = [torch.from_numpy(np.concatenate(level)) for level in zip(*runs)]
        graph = self.manifest['graphs']['features']
        n = graph['num_feats']
        return tuple(flat[:n]), unflatten_outputs(flat[n:], graph['head_structure'])

    # --- MMDetection's predict, tensor parts from ONNX Runtime --------------------------
    @torch.no_grad()
    def predict(self, inputs, data_samples, rescale=True):
        """Like the detector's ``predict(batch_inputs, batch_data_samples, rescale)``:
        ``inputs`` after the data preprocessor; returns ``data_samples`` with
        ``pred_instances``."""
        start = time.perf_counter()
        self.last_timings = {}
        model = self.model
        metas = [s.metainfo for s in data_samples]
        x, outs = self.features(inputs)
        if self.kind == 'single_stage':
            results = model.bbox_head.predict_by_feat(*outs, batch_img_metas=metas,
                                                      rescale=rescale)
        else:
            if data_samples[0].get('proposals', None) is None:
                proposals = model.rpn_head.predict_by_feat(*outs, batch_img_metas=metas,
                                                           rescale=False)
            else:
                proposals = [s.proposals for s in data_samples]
            roi_head = model.roi_head
            # A channel subnet's features may be narrower than the config's; the extractors
            # allocate their output with out_channels.
            roi_head.bbox_roi_extractor.out_channels = x[0].shape[1]
            if roi_head.with_mask:
                roi_head.mask_roi_extractor.out_channels = x[0].shape[1]
            results = roi_head.predict(x, proposals, data_samples, rescale=rescale)
        data_samples = model.add_pred_to_datasample(data_samples, results)
        self.last_timings['ort'] = sum(self.last_timings.values())
        self.last_timings['total'] = time.perf_counter() - start
        return data_samples

    def test_step(self, data):
        """The model's data preprocessor, then :meth:`predict` (as ``model.test_step``)."""
        data = self.model.data_preprocessor(data, False)
        return self.predict(data['inputs'], data['data_samples'])

    __call__ = test_step


@torch.no_grad()
def compare_with_torch(model, onnx_dir, num_rois=5, seed=0):
    """Each exported graph in ONNX Runtime vs ``model`` in PyTorch on random inputs (the
    RoI heads on ``num_rois`` RoIs, another count than the export's).

    Returns:
        ``{graph: {'max_abs_diff': d, 'relative': d / max(1, largest |PyTorch output|)}}``.
    """
    from mmsparse.deploy.onnx_export import FeaturesGraph, RoIPart
    model = model.cpu().eval()
    ort = OrtDetector(model, onnx_dir)
    graphs = ort.manifest['graphs']
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(ort.input_shape, generator=generator)
    cases = [('features', FeaturesGraph(model, ort.kind), image)]
    if ort.kind == 'two_stage':
        for name in ('bbox_head', 'mask_head'):
            if name in graphs:
                shape = graphs[name]['roi_feature_shape']
                roi_feats = torch.randn(num_rois, *shape, generator=generator)
                cases.append((name, RoIPart(getattr(model.roi_head, name)), roi_feats))
    diffs = {}
    for name, module, inputs in cases:
        expected = module.eval()(inputs)
        got = ort._run(name, inputs.numpy())
        if len(got) != len(expected):
            raise RuntimeError(f'{name}: ONNX Runtime gave {len(got)} outputs, PyTorch '
                               f'{len(expected)}')
        diff = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
        scale = max(1.0, max(float(e.abs().max()) for e in expected))
        diffs[name] = dict(max_abs_diff=diff, relative=diff / scale)
    return diffs
