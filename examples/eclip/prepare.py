"""
FIXED: do not edit — farm verifies its hash.

Data and evaluation for the tiny eCLIP target.

The data is a synthetic image–phrase set: 32x32 RGB images with OBJECTS_PER_IMAGE
coloured shapes on a noisy background, each described by a phrase such as
"small red circle top left and large blue cross middle center". Every image also
comes with an "expert" heatmap (one Gaussian per object box), the stand-in for the
radiologists' eye-gaze heatmaps that give eCLIP its "e". Everything is generated
from a fixed seed on every run (about a second), so no trial downloads or caches
anything and every trial sees the same data whatever its own seed.

The metric is mean_rank: text->image retrieval over the held-out images (rank of
each caption's own image among all of them, 1 = best, mean over captions). Lower is
better; a model that has learned nothing scores about (N_EVAL + 1) / 2.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMG_SIZE = 32
OBJECTS_PER_IMAGE = 2
N_TRAIN = 10_000
N_EVAL = 1_000
DATA_SEED = 20240917  # fixed, independent of the trial seed

SIZES = {"small": 3.0, "large": 5.0}  # half-extent in pixels
COLORS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.85, 0.9),
    "magenta": (0.9, 0.15, 0.85),
    "orange": (0.95, 0.55, 0.1),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("square", "circle", "triangle", "cross")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")

# Word-level tokenizer: the phrases use a closed vocabulary, one token per word.
VOCAB = ("[PAD]", "[CLS]", "[SEP]", "and", *SIZES, *COLORS, *SHAPES, *ROWS, *COLS)
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
MAX_LEN = 2 + 6 * OBJECTS_PER_IMAGE  # [CLS] + 5 words per object + "and"s + [SEP]
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, IMG_SIZE, IMG_SIZE) float32: noise around 0, objects in [0, 1]
    tokens: torch.Tensor  # (N, MAX_LEN) int64, PAD_ID-padded
    heatmaps: torch.Tensor  # (N, IMG_SIZE, IMG_SIZE) float32 in [0, 1]
    captions: list[str]


def tokenize(caption: str) -> list[int]:
    ids = [CLS_ID, *(_WORD_ID[w] for w in caption.split()), SEP_ID]
    return ids + [PAD_ID] * (MAX_LEN - len(ids))


def _sample_objects(rng, n):
    """(size, colour, shape, cell) of each object; one image's objects sit in distinct cells."""
    cells = np.argsort(rng.random((n, 9)), axis=1)[:, :OBJECTS_PER_IMAGE]
    size = rng.integers(len(SIZES), size=(n, OBJECTS_PER_IMAGE))
    color = rng.integers(len(COLORS), size=(n, OBJECTS_PER_IMAGE))
    shape = rng.integers(len(SHAPES), size=(n, OBJECTS_PER_IMAGE))
    return np.stack([size, color, shape, cells], axis=-1)  # (n, OBJECTS_PER_IMAGE, 4)


def _mask(shape, dx, dy, r):
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= r
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "triangle":  # apex up
        return (abs(dy) <= r) & (abs(dx) <= (dy + r) / 2)
    arm = r / 3  # cross
    return ((abs(dx) <= arm) & (abs(dy) <= r)) | ((abs(dy) <= arm) & (abs(dx) <= r))


def _render(rng, objects):
    n = len(objects)
    images = 0.15 * rng.standard_normal((n, 3, IMG_SIZE, IMG_SIZE), dtype=np.float32)
    heatmaps = np.zeros((n, IMG_SIZE, IMG_SIZE), np.float32)
    yy, xx = np.mgrid[:IMG_SIZE, :IMG_SIZE].astype(np.float32) + 0.5
    cell = IMG_SIZE / 3
    palette = np.array(list(COLORS.values()), np.float32)
    half_sizes = np.array(list(SIZES.values()), np.float32)
    for k in range(objects.shape[1]):
        size, color, shape, cells = objects[:, k].T
        r = half_sizes[size][:, None, None]
        cy = ((cells // 3 + 0.5) * cell + rng.uniform(-1, 1, n)).astype(np.float32)
        cx = ((cells % 3 + 0.5) * cell + rng.uniform(-1, 1, n)).astype(np.float32)
        dy = yy - cy[:, None, None]
        dx = xx - cx[:, None, None]
        rgb = palette[color] + 0.05 * rng.standard_normal((n, 3), dtype=np.float32)
        for s, name in enumerate(SHAPES):
            sel = np.flatnonzero(shape == s)
            mask = _mask(name, dx[sel], dy[sel], r[sel])[:, None]
            images[sel] = np.where(mask, rgb[sel, :, None, None], images[sel])
        # Expert heatmap: a Gaussian over the object's box, as a gaze map would be.
        heatmaps = np.maximum(heatmaps, np.exp(-(dx**2 + dy**2) / (2 * r**2)))
    return images, heatmaps


def _caption(objs):
    sizes, colors = list(SIZES), list(COLORS)
    return " and ".join(
        f"{sizes[size]} {colors[color]} {SHAPES[shape]} {ROWS[cell // 3]} {COLS[cell % 3]}"
        for size, color, shape, cell in objs
    )


def _make_split(seed, n, distinct=False):
    rng = np.random.default_rng(seed)
    objects = _sample_objects(rng, 2 * n if distinct else n)
    if distinct:
        # Held-out scenes must be distinguishable by their phrase (object order aside),
        # otherwise two images would both be "correct" for a caption.
        keys = np.sort(objects @ np.array([1, 2, 16, 64]), axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        objects = objects[np.sort(first)[:n]]
    images, heatmaps = _render(rng, objects)
    captions = [_caption(o) for o in objects]
    tokens = torch.tensor([tokenize(c) for c in captions])
    return Split(torch.from_numpy(images), tokens, torch.from_numpy(heatmaps), captions)


def load_data():
    """(train, eval) splits. Only training may use the heatmaps; evaluation never sees them."""
    return _make_split(DATA_SEED, N_TRAIN), _make_split(DATA_SEED + 1, N_EVAL, distinct=True)


@torch.no_grad()
def evaluate_mean_rank(model, batch_size=250):
    """Mean rank of the true image for each held-out caption (text->image, cosine similarity).

    model must provide encode_image(images) -> (B, D) and encode_text(tokens) -> (B, D).
    Ties count as the average rank of the tied block, so a collapsed model scores
    chance, (N_EVAL + 1) / 2, not 1.
    """
    split = _make_split(DATA_SEED + 1, N_EVAL, distinct=True)
    model.eval()
    img = torch.cat([model.encode_image(x) for x in split.images.split(batch_size)])
    txt = torch.cat([model.encode_text(t) for t in split.tokens.split(batch_size)])
    sim = F.normalize(txt.float(), dim=-1) @ F.normalize(img.float(), dim=-1).T
    true = sim.diagonal()[:, None]
    ranks = 1 + (sim > true).sum(1) + ((sim == true).sum(1) - 1) / 2
    return ranks.float().mean().item()
