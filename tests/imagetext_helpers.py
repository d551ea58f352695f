"""Tiny image-text datasets in their real download formats, written by the tests (JPEGs made with PIL):
a UPMC Food-101 tree (images/{train,test}/<class>/*.jpg + texts/*_titles.csv) and an MVSA-Single tree
(data/<id>.jpg, data/<id>.txt, labelResultAll.txt)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FOOD_CLASSES = ("apple_pie", "pizza", "sushi")
COLOURS = {"apple_pie": (200, 120, 40), "pizza": (220, 40, 30), "sushi": (240, 240, 240),
           "positive": (250, 200, 0), "neutral": (128, 128, 128), "negative": (20, 20, 90)}
WORDS = {"apple_pie": "apple pie crust cinnamon", "pizza": "pizza cheese tomato oven", "sushi": "sushi rice fish roll",
         "positive": "love great happy", "neutral": "today the news", "negative": "hate awful sad"}


def write_jpeg(path: Path, colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A small JPEG of ``colour`` with seeded noise (real JPEG bytes, decoded by PIL like a download)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG")
    return path


def food101_tree(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """UPMC Food-101's layout with ``per_class[split]`` pairs of each of ``FOOD_CLASSES`` (default 6 train,
    2 test); the text of each names its dish among fillers, as the web pages' titles do."""
    per_class = per_class or {"train": 6, "test": 2}
    for split, n in per_class.items():
        rows = []
        for k, cls in enumerate(FOOD_CLASSES):
            for i in range(n):
                name = f"{cls}_{i}.jpg"
                write_jpeg(root / "images" / split / cls / name, COLOURS[cls], seed=1000 * k + i + (split == "test"))
                rows.append([name, f"Best {WORDS[cls]} recipe, {i} ways | Food, blog", cls])
        (root / "texts").mkdir(parents=True, exist_ok=True)
        with open(root / "texts" / f"{split}_titles.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
    return root


def mvsa_tree(root: Path, pairs: list[tuple[str, str]]) -> Path:
    """MVSA-Single's layout: tweet ``i + 1`` has the (text label, image label) ``pairs[i]``; its text and image
    follow the cleaned label (the image the colour of the image label)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    lines = ["ID\ttext,image"]
    for i, (text_label, image_label) in enumerate(pairs, start=1):
        write_jpeg(root / "data" / f"{i}.jpg", COLOURS[image_label], seed=i)
        (root / "data" / f"{i}.txt").write_text(f"RT @user: {WORDS[text_label]} #{i} http://t.co/x{i}\n")
        lines.append(f"{i}\t{text_label},{image_label}")
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return root
