"""Write the synthetic shapes dataset (COCO instance segmentation) used by the demo and tests.

Example::

    python tools/misc/make_shapes_dataset.py                      # data/shapes, the demo default
    python tools/misc/make_shapes_dataset.py --out data/hard --difficulty 1.6 --num-train 1000
"""
import argparse
import time

from mmsparse.datasets.shapes import ShapesSpec, dataset_is_current, make_shapes_dataset


def parse_args():
    d = ShapesSpec()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/shapes', help='output folder')
    p.add_argument('--image-size', type=int, default=d.image_size)
    p.add_argument('--num-train', type=int, default=d.num_train)
    p.add_argument('--num-val', type=int, default=d.num_val)
    p.add_argument('--max-objects', type=int, default=d.max_objects)
    p.add_argument('--min-size', type=float, default=d.min_size,
                   help='smallest shape radius as a fraction of the image side')
    p.add_argument('--max-size', type=float, default=d.max_size,
                   help='largest shape radius as a fraction of the image side')
    p.add_argument('--difficulty', type=float, default=d.difficulty,
                   help='0 clean and separated, 1 default, 2 very hard')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--force', action='store_true', help='rewrite even if up to date')
    return p.parse_args()


def main():
    args = parse_args()
    spec = ShapesSpec(image_size=args.image_size, num_train=args.num_train,
                      num_val=args.num_val, max_objects=args.max_objects,
                      min_size=args.min_size, max_size=args.max_size,
                      difficulty=args.difficulty, seed=args.seed)
    if not args.force and dataset_is_current(args.out, spec):
        print(f'{args.out} is up to date for {spec}')
        return
    start = time.time()
    coco = make_shapes_dataset(args.out, spec)
    for split, c in coco.items():
        print(f'{split}: {len(c["images"])} images, {len(c["annotations"])} instances')
    print(f'wrote {args.out} in {time.time() - start:.1f}s')


if __name__ == '__main__':
    main()
