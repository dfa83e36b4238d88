"""COCO caption/feature builder: the three file layouts parsed exactly, count checks, the
vocabulary (train + first dev images, or train only), caption/image pairing through both
samplers (one random caption per image per epoch, resumable; every caption once), test folds,
and the synthetic corpus."""

from pathlib import Path

import numpy as np
import pytest

from lnorm.data import coco
from lnorm.data.common import DataError, prepare
from lnorm.data.vocab import load_vocab

TRAIN_CAPS = ["a dog runs", "a dog", "the dog runs fast", "dog", "a big dog",
              "a cat sits", "cat", "the cat", "a cat on a mat", "cats"]
# Words by training count (a 6, dog 5, cat 4, runs 2, the 2, then the rest alphabetically).
VOCAB = ["<pad>", "<unk>", "<eos>", "a", "dog", "cat", "runs", "the",
         "big", "cats", "fast", "mat", "on", "sits"]
DEV_CAPS = ["a dog", "a dog", "a puppy", "a dog", "a dog"] + ["a kitten"] * 5
# With the first dev image's captions (the default's first 1,000 dev images, here 1):
# a 11, dog 9, ...; "puppy" joins the count-1 words, "kitten" (second dev image) does not.
VOCAB_DEV1 = ["<pad>", "<unk>", "<eos>", "a", "dog", "cat", "runs", "the",
              "big", "cats", "fast", "mat", "on", "puppy", "sits"]
FEATURE_DIM = 3


def _write_split(root: Path, prefix: str, name: str, caps: list[str], ims: np.ndarray):
    (root / f"{prefix}{name}_caps.txt").write_text("\n".join(caps) + "\n")
    np.save(root / f"{prefix}{name}_ims.npy", ims)


def _hand_files(root: Path) -> Path:
    """The later layout (no `coco_` prefix); the synthetic corpus uses the original one."""
    root.mkdir(parents=True, exist_ok=True)
    _write_split(root, "", "train", TRAIN_CAPS, np.eye(2, FEATURE_DIM, dtype=np.float32))
    _write_split(root, "", "dev", DEV_CAPS, np.array([[2, 2, 2], [7, 7, 7]], np.float32))
    _write_split(root, "", "test", ["a zebra"] * 10, np.arange(6, dtype=np.float32).reshape(2, 3))
    return root


@pytest.fixture(scope="module")
def hand_raw(tmp_path_factory) -> Path:
    return _hand_files(tmp_path_factory.mktemp("coco_raw"))


@pytest.fixture(scope="module")
def hand(hand_raw, tmp_path_factory):
    """Prepared with the train-only vocabulary."""
    config = coco.coco_config(feature_dim=FEATURE_DIM, vocab_dev_images=0)
    return prepare(coco.Coco, tmp_path_factory.mktemp("coco_out"), manual_dir=hand_raw,
                   config=config)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = coco.write_synthetic(tmp_path_factory.mktemp("coco_syn"), num_examples=80, seed=0,
                               feature_dim=32)
    builder = prepare(coco.Coco, tmp_path_factory.mktemp("coco_syn_out"), manual_dir=raw,
                      config=coco.CocoConfig(name="dim32", feature_dim=32))
    return raw, builder


def test_examples_and_vocabulary_exact(hand, hand_raw, tmp_path):
    assert load_vocab(hand).tokens == VOCAB
    assert [hand.info.splits[s].num_examples for s in ("train", "validation", "test")] == [2, 2, 2]
    train = hand.as_data_source("train")
    for i in range(2):
        assert [c.decode() for c in train[i]["captions"]] == TRAIN_CAPS[5 * i : 5 * i + 5]
        np.testing.assert_array_equal(train[i]["image"], np.eye(2, FEATURE_DIM)[i])
        assert train[i]["index"] == i
    np.testing.assert_array_equal(hand.as_data_source("validation")[1]["image"], [7, 7, 7])
    # The original's vocabulary: training captions plus those of the first dev image(s).
    config = coco.coco_config(feature_dim=FEATURE_DIM, vocab_dev_images=1)
    with_dev = prepare(coco.Coco, tmp_path / "out", manual_dir=hand_raw, config=config)
    assert load_vocab(with_dev).tokens == VOCAB_DEV1
    assert coco.coco_config() is coco.Coco.BUILDER_CONFIGS[0]
    assert coco.coco_config().vocab_dev_images == 1000
    with pytest.raises(ValueError, match="vocab_dev_images=-1"):
        coco.coco_config(vocab_dev_images=-1)


def test_pipeline_pairs_captions_with_their_image(hand):
    vocab = load_vocab(hand)
    p = coco.make_pipeline(hand.as_data_source("train"), vocab, batch_size=4, sampler="caption",
                           shuffle=False, buckets=None, bucket_by_length=False)
    batches = list(p.batches(0))
    assert [len(b["image_index"]) for b in batches] == [4, 4, 2]
    first = batches[0]
    np.testing.assert_array_equal(first["caption"], [[3, 4, 6, 2, 0], [3, 4, 2, 0, 0],
                                                     [7, 4, 6, 10, 2], [4, 2, 0, 0, 0]])
    assert first["caption_length"].tolist() == [4, 3, 5, 2]
    np.testing.assert_array_equal(first["caption_mask"], first["caption"] != 0)
    assert np.concatenate([b["image_index"] for b in batches]).tolist() == [0] * 5 + [1] * 5
    np.testing.assert_array_equal(batches[2]["image"], np.eye(2, FEATURE_DIM)[[1, 1]])


def test_one_random_caption_per_image_each_epoch(hand):
    """The original's sampler: every image once per epoch, in a fresh order, with one of its
    own captions drawn at random; the plan depends on (seed, epoch) only, so a run resumes at
    any batch; the last partial batch is dropped by default."""
    vocab = load_vocab(hand)
    own = {i: [coco.encode(c, vocab).tolist() for c in TRAIN_CAPS[5 * i : 5 * i + 5]]
           for i in range(2)}
    p = coco.make_pipeline(hand.as_data_source("train"), vocab, batch_size=1, seed=3,
                           buckets=None)
    assert len(p) == 2
    seen = {0: set(), 1: set()}
    orders = set()
    for epoch in range(30):
        batches = list(p.batches(epoch))
        assert sorted(int(b["image_index"][0]) for b in batches) == [0, 1]
        orders.add(tuple(int(b["image_index"][0]) for b in batches))
        for b in batches:
            i, length = int(b["image_index"][0]), int(b["caption_length"][0])
            caption = b["caption"][0, :length].tolist()
            assert caption in own[i]
            seen[i].add(tuple(caption))
            np.testing.assert_array_equal(b["image"][0], np.eye(2, FEATURE_DIM)[i])
    assert orders == {(0, 1), (1, 0)}
    assert len(seen[0]) == 5 and len(seen[1]) == 5
    # Deterministic, and resumable mid-epoch.
    first = list(p.batches(7))
    again = list(p.batches(7, 1))
    np.testing.assert_array_equal(again[0]["caption"], first[1]["caption"])
    np.testing.assert_array_equal(next(iter(p.batches(7)))["caption"], first[0]["caption"])
    with pytest.raises(ValueError, match="sampler='word'"):
        coco.make_pipeline(hand.as_data_source("train"), vocab, batch_size=1, sampler="word")


def test_image_sampler_batches_and_remainder(synthetic):
    _, builder = synthetic
    vocab, train = load_vocab(builder), builder.as_data_source("train")  # 80 images
    p = coco.make_pipeline(train, vocab, batch_size=32, seed=0, buckets=(8, 16))
    batches = list(p.batches(0))
    assert len(p) == len(batches) == 2  # 80 // 32, the partial batch dropped
    images = np.concatenate([b["image_index"] for b in batches])
    assert len(set(images.tolist())) == 64  # no image twice in an epoch
    for b in batches:
        assert b["caption"].shape[1] in (8, 16)
        assert (b["caption"].shape[1] == 16) == (b["caption_length"].max() > 8)
    kept = coco.make_pipeline(train, vocab, batch_size=32, drop_remainder=False)
    assert [len(b["image_index"]) for b in kept.batches(0)] == [32, 32, 16] and len(kept) == 3
    # Unshuffled: images in file order, captions still drawn from (seed, epoch).
    ordered = coco.make_pipeline(train, vocab, batch_size=40, shuffle=False)
    np.testing.assert_array_equal(next(iter(ordered.batches(0)))["image_index"], np.arange(40))


def test_release_layouts(tmp_path):
    """The order-embedding release (`val` for dev, features under images/10crop/) and the
    prefixed layout, which wins where both are present."""
    root = tmp_path / "zip"
    (root / "images" / "10crop").mkdir(parents=True)
    ims = np.ones((1, FEATURE_DIM), np.float32)
    for name in ("train", "val", "test"):
        (root / f"{name}.txt").write_text("\n".join([f"{name} caption"] * 5) + "\n")
        np.save(root / "images" / "10crop" / f"{name}.npy", ims * len(name))
    caps, feats = coco.read_split(root, "dev", FEATURE_DIM)
    assert caps == ["val caption"] * 5 and feats.tolist() == [[3.0] * 3]
    assert coco.split_files(root, "dev") == (root / "val.txt", root / "images/10crop/val.npy")
    _write_split(root, "coco_", "dev", ["prefixed"] * 5, ims)
    assert coco.read_split(root, "dev", FEATURE_DIM)[0] == ["prefixed"] * 5


def test_split_arrays_and_folds(hand):
    vocab = load_vocab(hand)
    assert coco.fold_splits(5000) == ["test[0:1000]", "test[1000:2000]", "test[2000:3000]",
                                      "test[3000:4000]", "test[4000:5000]"]
    folds = coco.fold_splits(2, fold_size=1)
    arrays = coco.split_arrays(hand.as_data_source(folds[1]), vocab)
    np.testing.assert_array_equal(arrays["image"], [[3, 4, 5]])
    np.testing.assert_array_equal(arrays["caption"], [[3, 1, 2]] * 5)  # "a <unk> <eos>"
    assert arrays["image_index"].tolist() == [0] * 5
    with pytest.raises(ValueError, match="folds of 1000"):
        coco.fold_splits(4500)


def test_bad_files_name_file_and_problem(tmp_path):
    root = _hand_files(tmp_path / "raw")
    (root / "train_caps.txt").write_text("\n".join(TRAIN_CAPS[:9]) + "\n")
    with pytest.raises(DataError, match=r"train_caps\.txt: 9 captions for the 2 images"):
        coco.read_split(root, "train", FEATURE_DIM)
    (root / "dev_caps.txt").write_text("a dog\n\na dog\na dog\na dog\n")
    with pytest.raises(DataError, match=r"dev_caps\.txt:2: empty caption"):
        coco.read_split(root, "dev", FEATURE_DIM)
    with pytest.raises(DataError, match=r"test_ims\.npy: expected a float array \[images, 4096\]"):
        coco.read_split(root, "test", 4096)


def test_missing_files_give_instructions(tmp_path):
    with pytest.raises(DataError, match=r"(?s)absent does not exist.*coco_train_caps\.txt"):
        prepare(coco.Coco, tmp_path / "out", manual_dir=tmp_path / "absent")
    root = _hand_files(tmp_path / "raw")
    (root / "test_ims.npy").unlink()
    with pytest.raises(DataError, match=r"(?s)missing files.*coco_test_ims\.npy.*coco\.zip"):
        prepare(coco.Coco, tmp_path / "out", manual_dir=root)


def test_synthetic_round_trip_and_learnable(synthetic):
    raw, builder = synthetic
    vocab = load_vocab(builder)
    train = builder.as_data_source("train")
    np.testing.assert_array_equal(train[7]["image"], np.load(raw / "coco_train_ims.npy")[7])
    p = coco.make_pipeline(train, vocab, batch_size=32, seed=1, sampler="caption",
                           buckets=(8, 16))
    pairs = []
    for batch in p.batches(0):
        assert batch["caption"].shape[1] in (8, 16)
        positions = np.arange(batch["caption"].shape[1])
        np.testing.assert_array_equal(
            batch["caption_mask"], positions < batch["caption_length"][:, None]
        )
        pairs += batch["image_index"].tolist()
    assert np.bincount(pairs).tolist() == [5] * 80  # every caption once per epoch

    # Captions carry their image: a least-squares map from bag of words to features, fit on
    # train, retrieves the right test image from a caption far above chance (1 in 20).
    def bags(split):
        a = coco.split_arrays(builder.as_data_source(split), vocab)
        x = np.zeros((len(a["caption"]), len(vocab)))
        np.add.at(x, (np.arange(len(x))[:, None], a["caption"]), a["caption_mask"])
        return x, a["image"], a["image_index"]

    x, ims, idx = bags("train")
    w = np.linalg.lstsq(x, ims[idx], rcond=None)[0]
    x, ims, idx = bags("test")
    scores = (x @ w) @ ims.T / np.linalg.norm(ims, axis=1)
    assert (scores.argmax(1) == idx).mean() > 0.8
