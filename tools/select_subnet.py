"""Pick the most accurate subnet that fits a deployment budget, and say why.

Examples::

    # the best subnet under 1.2 GFLOPs (MACs) and 8 M parameters
    python tools/select_subnet.py results.json --max-flops 1.2G --max-params 8M
    # only what an accelerator with 2:4 kernels runs fast (or the dense network)
    python tools/select_subnet.py results.json --pattern dense,nm@2:4
    # a latency budget on the device the benchmark ran on
    python tools/select_subnet.py results.json --latency bench/benchmark.json \\
        --max-latency-ms 900 --json choice.json

``results.json`` comes from ``tools/test.py --subnets all --out results.json``; the latency
JSON from ``tools/analysis_tools/benchmark_subnets.py`` on the target device. Exits with
status 1 and says which budget excluded what when nothing fits, and with a message naming
the file and key when an input is malformed. Subnets without a usable value of the metric
(no detections, NaN) are never chosen; the explanation lists them.
"""
import argparse
import json
import sys

from mmsparse.evaluation.selection import SelectionError, explain, select_subnet
from mmsparse.utils.safe_write import atomic_write_json, check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('results', help='results.json of tools/test.py --out')
    p.add_argument('--metric', help='metric to maximise (default: coco/segm_mAP if every '
                   'subnet has it, else coco/bbox_mAP)')
    p.add_argument('--max-flops', help='upper bound on FLOPs (MACs) per image, e.g. 30G')
    p.add_argument('--max-params', help='upper bound on parameters, e.g. 5M')
    p.add_argument('--max-latency-ms', help='upper bound on latency in ms (needs --latency)')
    p.add_argument('--latency', metavar='JSON',
                   help='latency per subnet: the JSON of benchmark_subnets.py')
    p.add_argument('--pattern', help='accepted patterns or subnets, comma-separated: dense, '
                   'unstructured, channel, nm, block, or names such as nm@2:4')
    p.add_argument('--json', metavar='FILE', help='also write the choice and the reasons')
    p.add_argument('--force', action='store_true',
                   help='overwrite --json if it exists (never an input)')
    return p.parse_args(argv)


def _load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise SelectionError(f'cannot read {what} {path!r}: {err}') from None


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.json:
            check_outputs([args.json], [args.results, args.latency], args.force, '--json')
        results = _load(args.results, 'results')
        latency = _load(args.latency, 'latency data') if args.latency else None
        selection = select_subnet(results, metric=args.metric, max_flops=args.max_flops,
                                  max_params=args.max_params,
                                  max_latency_ms=args.max_latency_ms, pattern=args.pattern,
                                  latency=latency, sources=(args.results, args.latency))
    except (SelectionError, ValueError) as err:  # SubnetNameError is a ValueError
        print(f'select_subnet: {err}', file=sys.stderr)
        return 1
    print('\n'.join(explain(selection)))
    if args.json:
        atomic_write_json(args.json, selection.as_dict())
    return 0


if __name__ == '__main__':
    sys.exit(main())
