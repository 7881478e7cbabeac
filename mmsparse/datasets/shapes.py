"""Synthetic shapes: a deterministic COCO-format instance-segmentation dataset.

mmsparse's embedded default dataset, so that the demo and the tests run with no download.
Each image has a textured background with clutter, a few filled shapes of five classes in
random colours, sizes and rotations (later shapes occlude earlier ones), and pixel noise.
Annotations are the *visible* part of each shape: polygons from its visible mask, with the
box and area pycocotools computes from those polygons, so annotations and COCO evaluation
agree exactly.

``difficulty`` scales everything that makes the task hard at once: clutter, noise, colour
similarity between shapes and background, object count and overlap. 1.0 is the default, which
a dense CPU Mask R-CNN does not saturate; 0 gives clean, high-contrast, separated shapes.
"""
import json
import os.path as osp
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle', 'star', 'cross')
SPLITS = {'train': 0, 'val': 1}


@dataclass(frozen=True)
class ShapesSpec:
    """Knobs of the generator; the defaults are the demo dataset.

    Attributes:
        image_size: Side of the square images in pixels.
        num_train: Number of training images.
        num_val: Number of validation images.
        max_objects: Most shapes per image (at least 1 per image; scaled by difficulty).
        min_size: Smallest shape radius as a fraction of the image side.
        max_size: Largest shape radius as a fraction of the image side.
        difficulty: 0 = clean and separated, 1 = default, up to 2 = very hard.
        seed: Seed; the same spec always gives byte-identical files.
    """
    image_size: int = 128
    num_train: int = 256
    num_val: int = 64
    max_objects: int = 6
    min_size: float = 0.06
    max_size: float = 0.22
    difficulty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f'image_size must be >= 32 pixels, got {self.image_size}')
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f'num_train and num_val must be >= 1, got {self.num_train}, '
                             f'{self.num_val}')
        if self.max_objects < 1:
            raise ValueError(f'max_objects must be >= 1, got {self.max_objects}')
        if not 0 < self.min_size <= self.max_size < 0.5:
            raise ValueError('need 0 < min_size <= max_size < 0.5, got '
                             f'{self.min_size}, {self.max_size}')
        if not 0.0 <= self.difficulty <= 2.0:
            raise ValueError(f'difficulty must be in [0, 2], got {self.difficulty}')


def shape_polygon(name, center, radius, angle, rng):
    """Vertices (K, 2) of one shape, in pixel coordinates.

    Args:
        name: One of :data:`CLASSES`.
        center: (x, y) centre.
        radius: Circumscribed radius in pixels.
        angle: Rotation in radians.
        rng: ``np.random.Generator`` for the shape's own proportions.
    """
    if name == 'circle':  # slightly elliptic, so circles are not a template match
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        aspect = rng.uniform(0.85, 1.0)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], 1)
    elif name == 'square':  # rectangles with moderate aspect ratio
        aspect = rng.uniform(0.7, 1.0)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) / np.sqrt(2)
    elif name == 'triangle':
        t = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == 'star':
        inner = rng.uniform(0.38, 0.55)
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == 'cross':
        w = rng.uniform(0.28, 0.42)
        pts = np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                        [-w, w], [-1, w], [-1, -w], [-w, -w]])
    else:
        raise ValueError(f'unknown shape {name!r}; expected one of {CLASSES}')
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T * radius + np.asarray(center, dtype=np.float64)


def _background(rng, size, difficulty):
    """A colour gradient plus low-frequency blobs and clutter strokes (uint8 HxWx3)."""
    base = rng.uniform(40, 215, 3)
    tilt = rng.normal(0, 40 * difficulty, (2, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Clutter: distractor strokes and blobs that are not annotated objects.
    for _ in range(rng.poisson(6 * difficulty)):
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        p0, p1 = rng.integers(0, size, (2, 2))
        if rng.random() < 0.6:
            cv2.line(img, tuple(map(int, p0)), tuple(map(int, p1)), colour,
                     int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
        else:
            axes = tuple(int(a) for a in rng.integers(1, max(2, size // 16), 2))
            cv2.ellipse(img, tuple(map(int, p0)), axes, float(rng.uniform(0, 180)), 0, 360,
                        colour, -1, lineType=cv2.LINE_AA)
    return img


def _object_colour(rng, background_mean, difficulty):
    """A shape colour; higher difficulty allows colours closer to the background."""
    min_contrast = 120 - 45 * difficulty  # Euclidean RGB distance to the background mean
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background_mean) >= min_contrast:
            return colour
    return 255 - background_mean


def render_image(rng, spec):
    """Draw one image and return it with its visible instances.

    Returns:
        tuple: ``(image uint8 HxWx3 BGR, [(class_index, visible bool mask), ...])``.
    """
    size = spec.image_size
    img = _background(rng, size, spec.difficulty)
    labels = np.full((size, size), -1, np.int32)
    bg_mean = img.reshape(-1, 3).mean(0)
    n_max = max(1, round(spec.max_objects * (0.5 + 0.5 * min(spec.difficulty, 1.0))))
    n_obj = int(rng.integers(1, n_max + 1))
    classes = rng.integers(0, len(CLASSES), n_obj)
    placed = []
    for i, cls in enumerate(classes):
        radius = rng.uniform(spec.min_size, spec.max_size) * size
        # Low difficulty keeps shapes apart; high difficulty lets them overlap heavily.
        min_gap = (1.0 - 0.6 * min(spec.difficulty, 1.5)) * radius
        for _ in range(20):
            center = rng.uniform(0.1 * size, 0.9 * size, 2)
            if all(np.linalg.norm(center - c) >= min_gap + r * 0.8 for c, r in placed):
                break
        placed.append((center, radius))
        poly = shape_polygon(CLASSES[cls], center, radius, rng.uniform(0, 2 * np.pi), rng)
        pts = np.round(poly).astype(np.int32)
        colour = _object_colour(rng, bg_mean, spec.difficulty)
        cv2.fillPoly(img, [pts], tuple(float(c) for c in colour), lineType=cv2.LINE_AA)
        cv2.fillPoly(labels, [pts], i)
        if rng.random() < 0.3 * spec.difficulty:  # texture: stripes of a second colour
            stripe = np.zeros((size, size), np.uint8)
            for k in range(-size, 2 * size, int(rng.integers(4, 9))):
                cv2.line(stripe, (k, 0), (k + size // 2, size), 1, 1)
            inside = (labels == i) & (stripe > 0)
            img[inside] = np.clip(img[inside] * 0.6 + 60, 0, 255).astype(np.uint8)
    noise = rng.normal(0, 10 * spec.difficulty, img.shape)
    img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    instances = [(int(cls), labels == i) for i, cls in enumerate(classes)]
    return img, instances


def mask_to_annotation(mask, min_area=8.0):
    """COCO polygon annotation fields for a visible mask, or None if too small.

    The box and area are pycocotools' own for the polygons, so they agree with what
    COCO evaluation rasterises.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    if not polygons:
        return None
    h, w = mask.shape
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    area = float(mask_utils.area(rle))
    if area < min_area:
        return None
    return dict(segmentation=polygons, area=area,
                bbox=[float(v) for v in mask_utils.toBbox(rle)], iscrowd=0)


def make_split(out_dir, split, spec):
    """Write one split's images and ``annotations/instances_<split>.json``.

    Returns:
        dict: The COCO dictionary written.
    """
    count = spec.num_train if split == 'train' else spec.num_val
    img_dir = Path(out_dir, split)
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([spec.seed, SPLITS[split], index])
        img, instances = render_image(rng, spec)
        file_name = f'{split}/{index:06d}.png'
        cv2.imwrite(str(Path(out_dir, file_name)), img)
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, height=spec.image_size,
                           width=spec.image_size))
        for cls, mask in instances:
            ann = mask_to_annotation(mask)
            if ann is not None:
                annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                        category_id=cls + 1, **ann))
    coco = dict(
        info=dict(description='mmsparse synthetic shapes', spec=asdict(spec)),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)])
    ann_dir = Path(out_dir, 'annotations')
    ann_dir.mkdir(parents=True, exist_ok=True)
    with open(ann_dir / f'instances_{split}.json', 'w') as f:
        json.dump(coco, f)
    return coco


def make_shapes_dataset(out_dir, spec=ShapesSpec()):
    """Write the train and val splits of the shapes dataset under ``out_dir``.

    Layout: ``{train,val}/NNNNNN.png`` and ``annotations/instances_{train,val}.json``.

    Returns:
        dict: split name -> COCO dictionary.
    """
    return {split: make_split(out_dir, split, spec) for split in SPLITS}


def dataset_is_current(out_dir, spec):
    """True when ``out_dir`` already holds both splits generated from ``spec``."""
    for split in SPLITS:
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        if not osp.isfile(path):
            return False
        with open(path) as f:
            if json.load(f).get('info', {}).get('spec') != asdict(spec):
                return False
    return True
