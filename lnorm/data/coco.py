"""MS-COCO caption/image-feature pairs of the order-embedding release (Vendrov et al. 2016).

Input per split (docs/paper.md §5): one tokenised caption a line, five consecutive captions per
image (caption `c` describes image `c // 5`), and a float32 `[images, 4096]` matrix of VGG19 fc7
features (10-crop averages in the order-embedding release); splits `train`, `dev`, `test`.
Three layouts are read (`LAYOUTS`, the first complete one wins): the visual-semantic-embedding
release's (`coco_{split}_caps.txt`, `coco_{split}_ims.npy`), the same without the prefix, and
the order-embedding release's `coco.zip` (`{train,val,test}.txt` with
`images/10crop/{train,val,test}.npy`; its dev split is named `val`). The prepared splits are
named `train`, `validation` (from dev) and `test`.

One example per image: `image` (its feature row), `captions` (its five captions as text) and
`index` (its row). Text keeps five ragged captions in one fixed-shape field; the pipeline encodes
them with the vocabulary saved next to the prepared dataset (`vocab.json`; ids 0/1/2 are
`<pad>`/`<unk>`/`<eos>`). Tokenisation is the order-embedding code's: the release is tokenised,
and captions are split on whitespace, with no lowercasing (the code does none). The vocabulary
is the original's by default: every word of the training captions and of the captions of the
first 1,000 dev images (the original's validation set); `CocoConfig.vocab_dev_images=0` keeps it
to the training captions. Features are stored as released; the order-embedding README notes
that they were scaled to unit norm before training (the experiment's step, not this module's).

Training order (`make_pipeline`): by default the original's, each epoch a fresh shuffle of the
images with one of their five captions drawn at random; every caption once per epoch, grouped by
length, as an option. Evaluation follows the paper: the 5,000 test images are cut into 5 folds
of 1,000 (`fold_splits`), and recall is averaged over the folds.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.common import DataError, manual_root, where
from lnorm.data.pipeline import ArraySource, Batch, Example, Pad, Pipeline, Source, collate
from lnorm.data.vocab import VOCAB_FILE, Vocab

CAPTIONS_PER_IMAGE = 5
EOS = "<eos>"
SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # prepared name -> file name
CAPTION_BUCKETS = (8, 12, 16, 20, 24, 32, 48, 64)
VALIDATION_IMAGES = 1000  # the original validates on (and takes words from) the first 1k dev images
SAMPLERS = ("image", "caption")
# (captions file, features file) per layout, `{name}` the file split and `{zip_name}` its name
# in the order-embedding release, whose dev split is `val`.
LAYOUTS = (
    ("coco_{name}_caps.txt", "coco_{name}_ims.npy"),
    ("{name}_caps.txt", "{name}_ims.npy"),
    ("{zip_name}.txt", "images/10crop/{zip_name}.npy"),
)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
COCO for order embeddings: get the order-embedding release's data
(`wget http://www.cs.toronto.edu/~vendrov/order/coco.zip`: Karpathy's splits with 10-crop VGG19
features), unzip it, and pass the folder holding `train.txt`, `val.txt`, `test.txt` and
`images/10crop/{train,val,test}.npy` as the manual directory. The visual-semantic-embedding
release's files (`coco_train_caps.txt`, `coco_train_ims.npy`, ... for train, dev and test, with
or without the `coco_` prefix) are read as well.
"""


def split_files(root: Path, name: str) -> tuple[Path, Path]:
    """`(captions, features)` of one file split (`train`, `dev` or `test`) under `root`, in the
    first layout of `LAYOUTS` that is complete; a DataError listing the layouts otherwise."""
    zip_name = "val" if name == "dev" else name
    candidates = [
        (root / caps.format(name=name, zip_name=zip_name), root / ims.format(name=name,
                                                                             zip_name=zip_name))
        for caps, ims in LAYOUTS
    ]
    for caps, ims in candidates:
        if caps.exists() and ims.exists():
            return caps, ims
    listed = "; ".join(f"{c.relative_to(root)} and {i.relative_to(root)}" for c, i in candidates)
    raise DataError(
        f"missing files in {root} for the {name} split: expected one of {listed}\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )


def read_captions(path: Path) -> list[str]:
    """The captions of a `*_caps.txt` file, one per line, whitespace-normalised."""
    captions = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                tokens = raw.decode("utf-8").split()
            except UnicodeDecodeError as e:
                raise DataError(f"{where(path, line_no)}: expected UTF-8 text ({e})") from None
            if not tokens:
                raise DataError(f"{where(path, line_no)}: empty caption; expected one a line")
            captions.append(" ".join(tokens))
    return captions


def read_features(path: Path, feature_dim: int) -> np.ndarray:
    """The `[images, feature_dim]` feature matrix of a `*_ims.npy` file (memory-mapped)."""
    try:
        ims = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a numpy .npy array ({e})") from None
    if ims.ndim != 2 or ims.shape[1] != feature_dim or ims.dtype.kind != "f":
        raise DataError(
            f"{path}: expected a float array [images, {feature_dim}]; got {ims.dtype} {ims.shape}"
        )
    return ims


def read_split(root: Path, name: str, feature_dim: int) -> tuple[list[str], np.ndarray]:
    """Captions and features of one file split, checked to hold five captions per image."""
    caps_path, ims_path = split_files(root, name)
    captions, ims = read_captions(caps_path), read_features(ims_path, feature_dim)
    if len(captions) != CAPTIONS_PER_IMAGE * len(ims):
        raise DataError(
            f"{caps_path}: {len(captions)} captions for the {len(ims)} images of {ims_path}; "
            f"expected {CAPTIONS_PER_IMAGE} per image ({CAPTIONS_PER_IMAGE * len(ims)} lines)"
        )
    return captions, ims


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
    """Feature width and vocabulary. The config name identifies a prepared dataset: give
    changed parameters a new name (`coco_config` does)."""

    feature_dim: int = 4096
    vocab_size: int | None = None  # specials included; None keeps every word
    min_count: int = 1
    # Captions of the first `vocab_dev_images` dev images join the training captions in the
    # vocabulary (the original's choice: its validation images); 0: training captions only.
    vocab_dev_images: int = VALIDATION_IMAGES


def coco_config(*, feature_dim: int = 4096, vocab_dev_images: int = VALIDATION_IMAGES
                ) -> CocoConfig:
    """The default config, or a variant named after its parameters (each prepares into its own
    folder)."""
    if (feature_dim, vocab_dev_images) == (4096, VALIDATION_IMAGES):
        return Coco.BUILDER_CONFIGS[0]
    if vocab_dev_images < 0:
        raise ValueError(f"vocab_dev_images={vocab_dev_images}: expected >= 0")
    return CocoConfig(name=f"dim{feature_dim}_devvocab{vocab_dev_images}",
                      feature_dim=feature_dim, vocab_dev_images=vocab_dev_images)


class Coco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One example per image: `image` float32 `[feature_dim]`, `captions` (5 strings), `index`.

    Not registered with TFDS (its own `coco` is a different dataset); use it through
    `lnorm.data.common.prepare`. File order is kept, so `index` is the example's position.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {  # noqa: RUF012 (TFDS API)
        "1.1.0": "Vocabulary from train + the first 1k dev images' captions by default; the "
                 "order-embedding release's layout.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [CocoConfig(name="default")]  # noqa: RUF012 (TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(self.builder_config.feature_dim,), dtype=np.float32
                    ),
                    "captions": tfds.features.Tensor(shape=(CAPTIONS_PER_IMAGE,), dtype=np.object_),
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        root = manual_root(dl_manager, [], MANUAL_DOWNLOAD_INSTRUCTIONS)
        for name in SPLITS.values():  # fail fast on a missing split, before the long work
            split_files(root, name)
        captions, _ = read_split(root, SPLITS["train"], cfg.feature_dim)
        if cfg.vocab_dev_images:
            dev, _ = read_split(root, SPLITS["validation"], cfg.feature_dim)
            captions += dev[: CAPTIONS_PER_IMAGE * cfg.vocab_dev_images]
        vocab = Vocab.build(
            (c.split() for c in captions),
            max_size=cfg.vocab_size,
            min_count=cfg.min_count,
            specials=(EOS,),
        )
        vocab.save(Path(self.data_dir) / VOCAB_FILE)
        return {split: self._generate_examples(root, name) for split, name in SPLITS.items()}

    def _generate_examples(self, root: Path, name: str):
        captions, ims = read_split(root, name, self.builder_config.feature_dim)
        for i in range(len(ims)):
            yield (
                i,
                {
                    "image": np.asarray(ims[i], dtype=np.float32),
                    "captions": np.array(
                        captions[CAPTIONS_PER_IMAGE * i : CAPTIONS_PER_IMAGE * (i + 1)],
                        dtype=object,
                    ),
                    "index": i,
                },
            )


def encode(caption: bytes | str, vocab: Vocab) -> np.ndarray:
    """Token ids of one stored caption, `<eos>` appended (the order-embedding encoder reads it
    as its last step)."""
    text = caption.decode("utf-8") if isinstance(caption, bytes) else caption
    return np.asarray([*vocab.encode(text.split()), vocab.index[EOS]], dtype=np.int32)


class CaptionPairs:
    """The (caption, image) pairs of a split, in memory: pair `c` is caption `c % 5` of image
    `c // 5`, as `{"caption": ids, "image": features, "image_index": c // 5}`.

    The split is read once (as the original code did: every image serves five captions, and
    decoding records per pair would cost more than the training step); train features take
    N x 4096 x 4 bytes (1.4 GB for COCO)."""

    def __init__(self, source: Source, vocab: Vocab):
        data = source if isinstance(source, ArraySource) else ArraySource.from_source(source)
        self.images = data.arrays["image"]
        self.captions = [encode(c, vocab) for c in data.arrays["captions"].reshape(-1)]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> Example:
        image_index = int(index) // CAPTIONS_PER_IMAGE
        return {
            "caption": self.captions[index],
            "image": self.images[image_index],
            "image_index": np.int32(image_index),
        }

    def lengths(self) -> np.ndarray:
        """Token count of every caption, `<eos>` included (for length bucketing)."""
        return np.array([len(c) for c in self.captions])


class OneCaptionPerImage(Pipeline):
    """The original's training order over `CaptionPairs`: each epoch a fresh shuffle of the
    images (from `(seed, epoch)`), each paired with one of its five captions drawn at random,
    cut into batches in that order (no length grouping). An epoch is one pass over the images;
    the plan is a function of `(seed, epoch)` only, so a run resumes at any batch."""

    def __init__(self, pairs: CaptionPairs, **kwargs):
        super().__init__(pairs, **kwargs)
        self.num_images = len(pairs.images)

    def __len__(self) -> int:
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def plan(self, epoch: int) -> list[np.ndarray]:
        n, b = self.num_images, self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        images = rng.permutation(n) if self.shuffle else np.arange(n)
        pairs = images * CAPTIONS_PER_IMAGE + rng.integers(CAPTIONS_PER_IMAGE, size=n)
        full = n // b * b
        batches = list(pairs[:full].reshape(-1, b))
        if full < n and not self.drop_remainder:
            batches.append(pairs[full:])
        return batches


def make_pipeline(
    source: Source | CaptionPairs,
    vocab: Vocab,
    *,
    batch_size: int,
    seed: int = 0,
    sampler: str = "image",
    shuffle: bool = True,
    drop_remainder: bool | None = None,
    buckets: tuple[int, ...] | None = CAPTION_BUCKETS,
    bucket_by_length: bool = True,
) -> Pipeline:
    """Training batches of (caption, image) pairs: `caption [B, L]` int32 ids ending in
    `<eos>`, `caption_mask`, `caption_length` (`<eos>` counted), `image [B, D]`,
    `image_index [B]`; `L` is the smallest of `buckets` that fits the batch.

    `sampler="image"` (the original's): each epoch every image once, with one of its captions
    drawn at random; the last partial batch is dropped unless `drop_remainder=False`.
    `sampler="caption"`: every caption once per epoch, the last partial batch kept unless
    `drop_remainder=True`, and with `bucket_by_length` batches of captions of similar length.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
    pairs = source if isinstance(source, CaptionPairs) else CaptionPairs(source, vocab)
    common = dict(batch_size=batch_size, seed=seed, shuffle=shuffle,
                  pad={"caption": Pad(buckets=buckets)})
    if sampler == "image":
        drop = True if drop_remainder is None else drop_remainder
        return OneCaptionPerImage(pairs, drop_remainder=drop, **common)
    return Pipeline(
        pairs,
        drop_remainder=bool(drop_remainder),
        lengths=pairs.lengths() if bucket_by_length else None,
        **common,
    )


def split_arrays(source: Source | CaptionPairs, vocab: Vocab) -> Batch:
    """Every image and caption of a split (or fold) for retrieval evaluation: `image [N, D]`,
    `caption [5N, L]`, `caption_mask`, `caption_length`, `image_index [5N]` (caption `c`
    describes image `c // 5`, counted within `source`)."""
    pairs = source if isinstance(source, CaptionPairs) else CaptionPairs(source, vocab)
    batch = collate(
        [
            {"caption": caption, "image_index": np.int32(c // CAPTIONS_PER_IMAGE)}
            for c, caption in enumerate(pairs.captions)
        ],
        {"caption": Pad()},
    )
    return {**batch, "image": pairs.images}


def fold_splits(num_images: int, *, fold_size: int = 1000, split: str = "test") -> list[str]:
    """Split names of the paper's test folds, `test[0:1000]` ... `test[4000:5000]` for the
    5,000 test images; read each with `builder.as_data_source(fold)` and `split_arrays`."""
    if fold_size <= 0 or num_images < fold_size or num_images % fold_size:
        raise ValueError(
            f"{num_images} images do not cut into folds of {fold_size}; expected a positive "
            "multiple of the fold size"
        )
    return [f"{split}[{lo}:{lo + fold_size}]" for lo in range(0, num_images, fold_size)]


def write_synthetic(
    out_dir: str | os.PathLike, *, num_examples: int, seed: int, feature_dim: int = 4096
) -> Path:
    """Writes `coco_{train,dev,test}_{caps.txt,ims.npy}` for `num_examples` training images
    (dev and test: a quarter each, at least 2). Each image shows 2-3 of 20 objects, each in one
    of 6 colours; its feature is the sum of fixed random vectors of those objects and colours
    plus noise, and each of its five captions names them ("red dog") in random order among
    filler words, so a caption is matched to its image by its words."""
    rng = np.random.default_rng(seed)
    objects = [
        "dog",
        "cat",
        "car",
        "bus",
        "tree",
        "boat",
        "kite",
        "pizza",
        "horse",
        "clock",
        "train",
        "chair",
        "bench",
        "bird",
        "plate",
        "bike",
        "sheep",
        "cake",
        "tower",
        "sign",
    ]
    colours = ["red", "blue", "green", "white", "black", "yellow"]
    fillers = ["a", "the", "with", "and", "near", "of", "on", "in"]
    object_vecs = rng.normal(size=(len(objects), feature_dim))
    colour_vecs = rng.normal(size=(len(colours), feature_dim))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held_out = max(2, num_examples // 4)
    for name, size in (("train", num_examples), ("dev", held_out), ("test", held_out)):
        captions, ims = [], np.zeros((size, feature_dim), np.float32)
        for i in range(size):
            things = [
                (o, int(rng.integers(len(colours))))
                for o in rng.choice(len(objects), size=int(rng.integers(2, 4)), replace=False)
            ]
            ims[i] = sum(object_vecs[o] + colour_vecs[c] for o, c in things)
            ims[i] += 0.1 * rng.normal(size=feature_dim)
            for _ in range(CAPTIONS_PER_IMAGE):
                words = [f"{colours[c]} {objects[o]}" for o, c in rng.permutation(things)]
                words += [str(w) for w in rng.choice(fillers, size=int(rng.integers(1, 4)))]
                captions.append(" ".join(rng.permutation(words)))
        (out / f"coco_{name}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        np.save(out / f"coco_{name}_ims.npy", ims)
    return out
