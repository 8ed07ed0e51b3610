"""The embedded default dataset: a SYNTHETIC, Emo8-format image folder, generated
deterministically, with class-dependent structure a small ViT learns in minutes on a CPU.

It is not emotion data: each of the 8 Mikels classes gets its own background palette,
gradient, shape family and texture; images carry EmoSet-style attributes for the prompt
(scene, object, brightness, colorfulness; facial_expression and human_action when a person
is drawn) and ~40% show a drawn stick figure whose exact box is stored, so the person view
can be checked. Layout: ROOT/{train,val,test}/CLASS/NAME.jpg plus NAME.json side-cars.
"""
import json
import math
import os
import shutil
import sys
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .prompts import MIKELS_EMOTIONS

VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# per class: two background colours, shape family, shape palette, texture, scenes, objects, face, actions
STYLE: Dict[str, Dict] = {
    "amusement": dict(bg=((255, 236, 150), (255, 170, 210)), shape="circle", texture=0.02,
                      palette=((255, 120, 0), (0, 170, 255), (255, 60, 160)),
                      scenes=("amusement park", "circus", "playground"),
                      objects=("balloon", "clown", "carousel", "confetti"), face="happy",
                      actions=("laughing", "playing", "juggling")),
    "anger": dict(bg=((150, 10, 10), (40, 0, 0)), shape="triangle", texture=0.05,
                  palette=((255, 60, 0), (20, 20, 20), (255, 200, 0)),
                  scenes=("street protest", "battlefield", "boxing ring"),
                  objects=("fire", "fist", "flag", "car wreck"), face="angry",
                  actions=("shouting", "fighting", "punching")),
    "awe": dict(bg=((10, 20, 90), (120, 60, 170)), shape="star", texture=0.01,
                palette=((255, 255, 220), (150, 220, 255), (255, 230, 120)),
                scenes=("mountain range", "night sky", "cathedral"),
                objects=("mountain", "stars", "aurora", "glacier"), face="surprise",
                actions=("looking up", "hiking", "standing")),
    "contentment": dict(bg=((200, 230, 180), (245, 235, 205)), shape="ellipse", texture=0.015,
                        palette=((120, 180, 90), (230, 190, 120), (250, 250, 240)),
                        scenes=("meadow", "garden", "living room"),
                        objects=("flower", "tea cup", "sofa", "cat"), face="neutral",
                        actions=("reading", "relaxing", "sitting")),
    "disgust": dict(bg=((110, 110, 40), (70, 50, 20)), shape="blob", texture=0.12,
                    palette=((150, 170, 40), (90, 60, 30), (180, 150, 90)),
                    scenes=("garbage dump", "swamp", "sewer"),
                    objects=("trash", "worm", "mold", "rotten food"), face="disgust",
                    actions=("covering nose", "vomiting", "recoiling")),
    "excitement": dict(bg=((255, 120, 0), (230, 0, 140)), shape="ray", texture=0.03,
                       palette=((255, 255, 0), (0, 255, 200), (255, 255, 255)),
                       scenes=("concert", "stadium", "race track"),
                       objects=("fireworks", "crowd", "race car", "stage lights"), face="happy",
                       actions=("jumping", "cheering", "running")),
    "fear": dict(bg=((25, 30, 25), (5, 5, 10)), shape="spike", texture=0.08,
                 palette=((90, 110, 90), (160, 0, 0), (200, 200, 200)),
                 scenes=("dark forest", "abandoned house", "cave"),
                 objects=("shadow", "spider", "skull", "dead tree"), face="fear",
                 actions=("running away", "hiding", "screaming")),
    "sadness": dict(bg=((110, 120, 140), (60, 70, 90)), shape="rain", texture=0.04,
                    palette=((170, 180, 200), (80, 90, 120), (200, 200, 210)),
                    scenes=("rainy street", "cemetery", "hospital room"),
                    objects=("umbrella", "rain", "tombstone", "empty chair"), face="sad",
                    actions=("crying", "walking alone", "sitting alone")),
}
SIZES = ((160, 128), (128, 160), (144, 144))


def _background(rng: np.random.Generator, style: Dict, w: int, h: int) -> np.ndarray:
    c0, c1 = (np.array(c, np.float32) + rng.normal(0, 12, 3) for c in style["bg"])
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle) + 0.5
    img = c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)
    img += rng.normal(0, 255 * style["texture"], (h, w, 1))  # grain: a per-class texture
    return img


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, color, w: int, h: int) -> None:
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.06, 0.18) * min(w, h)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif kind == "ellipse":
        draw.ellipse((cx - 1.8 * r, cy - 0.8 * r, cx + 1.8 * r, cy + 0.8 * r), fill=color)
    elif kind == "triangle":
        a = rng.uniform(0, 2 * math.pi)
        draw.polygon([(cx + r * math.cos(a + k * 2.1), cy + r * math.sin(a + k * 2.1)) for k in range(3)], fill=color)
    elif kind in ("star", "spike"):
        n, inner = (5, 0.4) if kind == "star" else (9, 0.2)
        pts = [(cx + (r if k % 2 == 0 else inner * r) * math.cos(k * math.pi / n),
                cy + (r if k % 2 == 0 else inner * r) * math.sin(k * math.pi / n)) for k in range(2 * n)]
        draw.polygon(pts, fill=color)
    elif kind == "blob":
        for _ in range(4):
            dx, dy, rr = rng.normal(0, r / 2), rng.normal(0, r / 2), r * rng.uniform(0.3, 0.7)
            draw.ellipse((cx + dx - rr, cy + dy - rr, cx + dx + rr, cy + dy + rr), fill=color)
    elif kind == "ray":
        for k in range(8):
            a = k * math.pi / 4 + rng.uniform(-0.2, 0.2)
            draw.line((cx, cy, cx + 2.5 * r * math.cos(a), cy + 2.5 * r * math.sin(a)), fill=color, width=3)
    elif kind == "rain":
        for _ in range(6):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            draw.line((x, y, x - 2, y + r), fill=color, width=2)


def _person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, arms_up: bool,
            dark_background: bool) -> Tuple[float, ...]:
    """A stick figure; returns its exact box [x0, y0, x1, y1] (line widths included)."""
    height = rng.uniform(0.45, 0.8) * h
    x = rng.uniform(0.2 * w, 0.8 * w)
    top = rng.uniform(0, h - height)
    head = height * 0.12
    lw = max(2, int(height / 25))
    shade = rng.integers(0, 50, 3)
    color = tuple(int(v) for v in (255 - shade if dark_background else shade))  # contrast with the background
    neck, hip = top + 2 * head, top + 0.6 * height
    hand_y = top + (0.5 * head if arms_up else 0.55 * height)
    pts = [(x - 0.3 * height, hand_y), (x + 0.3 * height, hand_y),
           (x - 0.2 * height, top + height), (x + 0.2 * height, top + height)]
    draw.ellipse((x - head, top, x + head, top + 2 * head), fill=color)
    draw.line((x, neck, x, hip), fill=color, width=lw)
    for px, py in pts[:2]:
        draw.line((x, neck + head * 0.5, px, py), fill=color, width=lw)
    for px, py in pts[2:]:
        draw.line((x, hip, px, py), fill=color, width=lw)
    xs = [x - head, x + head] + [p[0] for p in pts]
    ys = [top, top + 2 * head] + [p[1] for p in pts]
    pad = lw / 2 + 1
    return (max(0.0, min(xs) - pad), max(0.0, min(ys) - pad), min(float(w), max(xs) + pad), min(float(h), max(ys) + pad))


def make_image(label: int, split: str, index: int, seed: int = 0) -> Tuple[Image.Image, Dict]:
    """One synthetic image of class `label` and its side-car (attributes + person_box)."""
    name = MIKELS_EMOTIONS[label]
    style = STYLE[name]
    rng = np.random.default_rng([seed, SPLIT_IDS[split], label, index])
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    img = Image.fromarray(np.clip(_background(rng, style, w, h), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        color = np.array(style["palette"][int(rng.integers(3))]) + rng.normal(0, 15, 3)
        _shape(draw, rng, style["shape"], tuple(int(v) for v in np.clip(color, 0, 255)), w, h)
    objects = [str(o) for o in rng.choice(style["objects"], size=int(rng.integers(1, 4)), replace=False)]
    meta: Dict = {"scene": str(rng.choice(style["scenes"])), "object": objects}
    box = None
    if rng.random() < 0.4:
        action = str(rng.choice(style["actions"]))
        box = _person(draw, rng, w, h, arms_up=action in ("cheering", "jumping", "juggling", "looking up"),
                      dark_background=float(np.mean(style["bg"])) < 128)
        meta.update(object=["person"] + objects, facial_expression=style["face"], human_action=action)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    meta["brightness"] = round(float(arr.mean()), 1)
    meta["colorfulness"] = round(float((arr.max(-1) - arr.min(-1)).mean()), 1)  # mean HSV-style saturation
    meta["person_box"] = [round(v, 2) for v in box] if box else None
    return img, meta


def write_sample_dataset(root: str, images_per_class_per_split: int = 32, seed: int = 0) -> str:
    """Write the synthetic Emo8-format folder (8 classes x 3 splits x n images) under `root`."""
    for split in SPLIT_IDS:
        for label, name in enumerate(MIKELS_EMOTIONS):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(images_per_class_per_split):
                img, meta = make_image(label, split, i, seed)
                stem = os.path.join(folder, f"{name}_{split}_{i:04d}")
                img.save(stem + ".jpg", quality=90)
                with open(stem + ".json", "w", encoding="utf-8") as f:
                    json.dump(meta, f)
    with open(os.path.join(root, "README.txt"), "w", encoding="utf-8") as f:
        f.write("SYNTHETIC images generated by uniemox.data.sample (not emotion data): "
                "for smoke tests and CPU demos only.\n")
    return root


def default_cache_dir() -> str:
    return os.environ.get("UNIEMOX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "uniemox"))


def ensure_sample_shards(cache_dir: Optional[str] = None, images_per_class_per_split: int = 32,
                         seed: int = 0, shard_size: int = 32, rank: int = 0) -> str:
    """The sample dataset as shards (built once, then cached); returns the shard folder, which
    the reader takes as is (its train split) or via `shard_urls(folder, ("train", "val"))`.
    Every rank may call it: concurrent callers each build in their own temporary folder and
    the first rename wins (a few seconds, so no rank waits on another, even across nodes
    without a shared cache); `rank` only silences the summary on ranks other than 0."""
    from .catalog import open_source  # the writer pulls in tqdm/webdataset: only when building
    from .manifest import MANIFEST
    from .writer import write_shards

    final = os.path.join(cache_dir or default_cache_dir(),
                         f"sample-v{VERSION}-n{images_per_class_per_split}-s{seed}-b{shard_size}")
    if os.path.isfile(os.path.join(final, MANIFEST)):
        return final
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_sample_dataset(os.path.join(tmp, "images"), images_per_class_per_split, seed)
        source = open_source(os.path.join(tmp, "images"), fmt="folder", dataset="emo8",
                             classes=MIKELS_EMOTIONS)
        source.dataset = "uniemox-sample (synthetic)"
        write_shards(source, os.path.join(tmp, "shards"), shard_size=shard_size, max_side=0,
                     detector="none", num_workers=0, progress=False)
        if rank == 0:
            print(f"built the SYNTHETIC sample dataset's shards in {final}", file=sys.stderr)
        try:
            os.rename(os.path.join(tmp, "shards"), final)
        except OSError:
            if not os.path.isfile(os.path.join(final, MANIFEST)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
