"""CNN Q&A builder: exact parsing of hand-written files, structure checks, vocabulary layout,
entity re-shuffling, and the synthetic corpus through builder and pipeline."""

from pathlib import Path

import numpy as np
import pytest

from lnorm.data import cnn_qa
from lnorm.data.common import DataError, prepare
from lnorm.data.pipeline import Pad, Pipeline, digest, split_cache
from lnorm.data.vocab import load_vocab

FILES = {
    "training/a.question": "http://x.com/a\n\n@entity0 met @entity1 in paris . @entity1 smiled\n\n"
    "@placeholder met @entity1\n\n@entity0\n\n@entity0:Ann Lee\n@entity1:Bob\n",
    "training/b.question": "http://x.com/b\n\n@entity2 saw @entity0 . paris is big\n\n"
    "@entity2 saw @placeholder\n\n@entity0\n\n@entity0:Cy\n@entity2:Di\n",
    "validation/c.question": "http://x.com/c\n\n@entity3 met @entity0 in rome\n\n"
    "@entity3 met @placeholder\n\n@entity0\n\n@entity0:E\n@entity3:F",  # no final newline
    "test/d.question": "http://x.com/d\n\n@entity1 met @entity0\n\n@placeholder met @entity0\n\n"
    "@entity1\n\n@entity0:G\n@entity1:H\n",
}
# Words by training count, ties alphabetical, after <pad>, <unk>, @placeholder and the entity
# block, which reaches @entity3 because validation mentions it.
VOCAB = ["<pad>", "<unk>", "@placeholder", "@entity0", "@entity1", "@entity2", "@entity3",
         ".", "met", "paris", "saw", "big", "in", "is", "smiled"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "cnn" / "questions" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    root = _write(tmp_path_factory.mktemp("cnn_raw"), FILES)
    return prepare(cnn_qa.CnnQa, tmp_path_factory.mktemp("cnn_out"), manual_dir=root)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = cnn_qa.write_synthetic(tmp_path_factory.mktemp("cnn_syn"), num_examples=48, seed=3)
    return prepare(cnn_qa.CnnQa, tmp_path_factory.mktemp("cnn_syn_out"), manual_dir=raw)


def test_parse_question_exact(tmp_path):
    q = cnn_qa.parse_question(_write(tmp_path, FILES) / "cnn/questions/training/a.question")
    assert q.url == "http://x.com/a"
    assert q.context == ["@entity0", "met", "@entity1", "in", "paris", ".", "@entity1", "smiled"]
    assert q.query == ["@placeholder", "met", "@entity1"]
    assert q.answer == "@entity0"
    assert q.entities == {"@entity0": "Ann Lee", "@entity1": "Bob"}


def test_vocabulary_and_stored_examples(hand):
    vocab = load_vocab(hand)
    assert vocab.tokens == VOCAB
    assert cnn_qa.entity_block(vocab) == (3, 4)
    assert {s: hand.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
        "train": 2, "validation": 1, "test": 1}
    a = hand.as_data_source("train")[0]
    assert a["context"].tolist() == [3, 8, 4, 12, 9, 7, 4, 14]
    assert a["query"].tolist() == [2, 8, 4]
    assert (a["answer"], a["candidates"].tolist(), a["index"]) == (0, [0, 1], 0)
    c = hand.as_data_source("validation")[0]
    assert vocab.decode(c["context"]) == ["@entity3", "met", "@entity0", "in", "<unk>"]
    assert (c["answer"], c["candidates"].tolist()) == (0, [0, 3])


def test_vocab_size_keeps_every_entity_marker(tmp_path):
    root = _write(tmp_path / "raw", FILES)
    small = prepare(cnn_qa.CnnQa, tmp_path / "out", manual_dir=root,
                    config=cnn_qa.CnnQaConfig(name="v9", vocab_size=9))
    assert load_vocab(small).tokens == VOCAB[:9]
    assert small.as_data_source("train")[0]["context"].tolist() == [3, 8, 4, 1, 1, 7, 4, 1]
    with pytest.raises(DataError, match="vocab_size=6 is below the 7 specials"):
        prepare(cnn_qa.CnnQa, tmp_path / "out", manual_dir=root,
                config=cnn_qa.CnnQaConfig(name="v6", vocab_size=6))


def test_pipeline_masks_and_candidates(hand):
    vocab = load_vocab(hand)
    p = cnn_qa.make_pipeline(hand.as_data_source("train"), vocab, batch_size=2, shuffle=False,
                             context_buckets=(4, 16), query_buckets=None, bucket_by_length=False)
    (batch,) = list(p.batches(0))
    assert batch["context"].shape == (2, 16) and batch["query"].shape == (2, 3)
    assert batch["context_length"].tolist() == [8, 7]
    np.testing.assert_array_equal(batch["context_mask"], np.arange(16) < [[8], [7]])
    assert (batch["context"][~batch["context_mask"]] == 0).all()
    assert batch["answer"].tolist() == [0, 0]
    np.testing.assert_array_equal(
        batch["candidate_mask"], [[True, True, False, False], [True, False, True, False]]
    )


BROKEN = [  # (edit of a.question's lines, line named, words of the message)
    (lambda ls: ["no url", *ls[1:]], 1, "URL"),
    (lambda ls: [*ls[:1], "x", *ls[2:]], 2, "blank line"),
    (lambda ls: [*ls[:4], "who met @entity1", *ls[5:]], 5, "@placeholder"),
    (lambda ls: [*ls[:6], "paris", *ls[7:]], 7, "entity marker"),
    (lambda ls: [*ls[:6], "@entity1", *ls[7:-1]], 7, "entity lines"),  # @entity1 unlisted
    (lambda ls: [*ls[:6], "@entity5", *ls[7:], "@entity5:Zed"], 7, "occurs in the context"),
    (lambda ls: [*ls, "Bob Smith"], 11, "@entityN:name"),
    (lambda ls: ls[:7], 8, "entity lines"),
]


@pytest.mark.parametrize(("edit", "line", "words"), BROKEN)
def test_malformed_question_names_file_and_line(tmp_path, edit, line, words):
    path = tmp_path / "bad.question"
    path.write_text("\n".join(edit(FILES["training/a.question"].rstrip("\n").split("\n"))))
    with pytest.raises(DataError, match=rf"bad\.question:{line}: .*{words}"):
        cnn_qa.parse_question(path)


def test_missing_files_give_instructions(tmp_path):
    with pytest.raises(DataError, match=r"(?s)cnn/questions/training.*cnn\.tgz"):
        prepare(cnn_qa.CnnQa, tmp_path / "out", manual_dir=tmp_path / "absent")
    _write(tmp_path / "partial", {"training/a.question": FILES["training/a.question"]})
    with pytest.raises(DataError, match=r"(?s)cnn/questions/validation.*cnn\.tgz"):
        prepare(cnn_qa.CnnQa, tmp_path / "out", manual_dir=tmp_path / "partial")


def _solve(context: np.ndarray, query: np.ndarray, placeholder: int) -> int:
    """The token at the placeholder where the query matches a stretch of the context."""
    slot = int(np.flatnonzero(query == placeholder)[0])
    for start in range(len(context) - len(query) + 1):
        window = context[start : start + len(query)]
        if all(w == q for j, (w, q) in enumerate(zip(window, query, strict=True)) if j != slot):
            return int(window[slot])
    return -1


def test_relabel_is_a_consistent_deterministic_permutation(synthetic):
    vocab = load_vocab(synthetic)
    offset, count = cnn_qa.entity_block(vocab)
    example = synthetic.as_data_source("train")[5]
    out = cnn_qa.Relabel(vocab, seed=1)(example)
    again, other = cnn_qa.Relabel(vocab, seed=1)(example), cnn_qa.Relabel(vocab, seed=2)(example)
    np.testing.assert_array_equal(out["context"], again["context"])
    assert not np.array_equal(out["context"], other["context"])
    # One bijection of entity ids explains every change; other tokens stay.
    mapping = {}
    for old, new in zip(np.concatenate([example["context"], example["query"]]),
                        np.concatenate([out["context"], out["query"]]), strict=True):
        is_entity = offset <= old < offset + count
        assert is_entity == (offset <= new < offset + count)
        if is_entity:
            assert mapping.setdefault(int(old), int(new)) == new
        else:
            assert old == new
    assert len(set(mapping.values())) == len(mapping)
    assert mapping[offset + int(example["answer"])] == offset + int(out["answer"])
    assert sorted(offset + out["candidates"]) == sorted(mapping[offset + c]
                                                        for c in example["candidates"])


def test_synthetic_answers_recoverable_after_relabelling(synthetic):
    vocab = load_vocab(synthetic)
    offset, _ = cnn_qa.entity_block(vocab)
    placeholder = vocab.index[cnn_qa.PLACEHOLDER]
    p = cnn_qa.make_pipeline(synthetic.as_data_source("train"), vocab, batch_size=16, seed=4,
                             relabel_entities=True, context_buckets=(32, 64))
    right = total = chance = 0.0
    seen = []
    for batch in p.batches(0):
        positions = np.arange(batch["context"].shape[1])
        np.testing.assert_array_equal(
            batch["context_mask"], positions < batch["context_length"][:, None]
        )
        assert batch["candidate_mask"][np.arange(len(batch["answer"])), batch["answer"]].all()
        for i in range(len(batch["answer"])):
            ctx = batch["context"][i, : batch["context_length"][i]]
            qry = batch["query"][i, : batch["query_length"][i]]
            right += _solve(ctx, qry, placeholder) - offset == batch["answer"][i]
            chance += 1 / batch["candidate_mask"][i].sum()
            total += 1
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(48))  # every question once per epoch
    assert right / total >= 0.9 > 2 * chance / total


# Top-k sentence filtering, on the hand-made corpus's vocabulary: "." is id 7, "met" 8,
# "paris" 9, "saw" 10, "big" 11, "in" 12, "is" 13, "smiled" 14, @placeholder 2, entities 3-6.
TOP_K_CONTEXT = np.array([
    8, 9, 7,          # met paris .         (query words met, paris: 2)
    10, 11, 7,        # saw big .           (0)
    4, 8, 12, 9, 7,   # @e1 met in paris .  (met, paris, @entity1: 3)
    13, 14, 7,        # is smiled .         (0)
    10, 8,            # saw met             (1; a trailing piece without "." is a sentence)
], np.int32)
TOP_K_QUERY = np.array([2, 8, 9, 4, 7, 0], np.int32)  # @placeholder met paris @e1 . <pad>


def test_top_k_keeps_the_most_relevant_sentences_in_document_order(hand):
    vocab = load_vocab(hand)
    top = cnn_qa.TopKSentences(vocab, 2)
    assert top.spans(TOP_K_CONTEXT, TOP_K_QUERY) == [(0, 3), (6, 11)]
    np.testing.assert_array_equal(top(TOP_K_CONTEXT, TOP_K_QUERY), [8, 9, 7, 4, 8, 12, 9, 7])
    # Ties go to the earlier sentence; placeholder, padding and "." never count.
    tied = cnn_qa.TopKSentences(vocab, 1)
    assert tied.spans(TOP_K_CONTEXT, np.array([2, 10, 7, 0], np.int32)) == [(3, 6)]
    assert tied.spans(TOP_K_CONTEXT, np.array([2, 7, 0], np.int32)) == [(0, 3)]
    assert cnn_qa.TopKSentences(vocab, 4).spans(TOP_K_CONTEXT, TOP_K_QUERY)[-1] == (14, 16)
    whole = cnn_qa.TopKSentences(vocab, 5)
    np.testing.assert_array_equal(whole(TOP_K_CONTEXT, TOP_K_QUERY), TOP_K_CONTEXT)
    with pytest.raises(ValueError, match="top_k_sentences=0"):
        cnn_qa.TopKSentences(vocab, 0)


def test_top_k_can_remove_the_answer_and_the_ceiling_says_so(hand):
    vocab = load_vocab(hand)
    source = [{"context": TOP_K_CONTEXT, "query": TOP_K_QUERY, "answer": np.int32(a),
               "candidates": np.array([1], np.int32), "index": np.int32(i)}
              for i, a in enumerate((1, 1))]  # @entity1 is in the kept third sentence
    assert cnn_qa.TopKSentences(vocab, 2).answer_kept(source, answer_offset=3) == 1.0
    source[1] = {**source[1], "query": np.array([2, 10, 11], np.int32)}  # keeps "saw big ."
    assert cnn_qa.TopKSentences(vocab, 1).answer_kept(source, answer_offset=3) == 0.5
    p = cnn_qa.make_pipeline(source, vocab, batch_size=2, shuffle=False, top_k_sentences=1,
                             context_buckets=None, query_buckets=None)
    np.testing.assert_array_equal(p.lengths, [5, 3])  # bucketing sees the shortened lengths
    (batch,) = list(p.batches(0))  # shortest first
    assert batch["index"].tolist() == [1, 0] and batch["context_length"].tolist() == [3, 5]
    np.testing.assert_array_equal(batch["context"][0, :3], [10, 11, 7])
    # The candidates stay the whole document's entities, so the answer is always one of them.
    assert batch["candidate_mask"][:, 1].all()


def _top_k_reference(context: list[int], query: list[int], k: int, ends: set[int],
                     ignored: set[int]) -> list[int]:
    """Brute force: split after sentence ends, score by shared distinct query words, keep the
    k best (earlier first among equals), in document order."""
    sentences, current = [], []
    for token in context:
        current.append(token)
        if token in ends:
            sentences.append(current)
            current = []
    sentences += [current] if current else []
    words = set(query) - ignored
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(words & set(sentences[i])), i))
    return [t for i in sorted(ranked[:k]) for t in sentences[i]]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_matches_a_brute_force_reference_through_the_pipeline(synthetic, k):
    vocab = load_vocab(synthetic)
    ends = {vocab.index["."]}
    ignored = ends | {vocab.pad_id, vocab.index[cnn_qa.PLACEHOLDER]}
    source = synthetic.as_data_source("train")
    p = cnn_qa.make_pipeline(source, vocab, batch_size=16, seed=2, relabel_entities=True,
                             top_k_sentences=k)
    relabel = cnn_qa.Relabel(vocab, seed=2)
    seen = 0
    for batch in p.batches(0):
        for i, index in enumerate(batch["index"]):
            example = relabel(source[int(index)])  # relabelling commutes with the filtering
            expected = _top_k_reference(example["context"].tolist(), example["query"].tolist(),
                                        k, ends, ignored)
            got = batch["context"][i, : batch["context_length"][i]].tolist()
            assert got == expected
            seen += 1
    assert seen == len(source)


# The in-memory pipeline against the per-example one it replaced, and pinned output.

PIPELINES = {  # name: (split, make_pipeline options)
    "train": ("train", dict(batch_size=8, seed=4, relabel_entities=True, top_k_sentences=2,
                            drop_remainder=True)),
    "plain": ("train", dict(batch_size=8, seed=1)),
    "eval": ("validation", dict(batch_size=5, shuffle=False, top_k_sentences=2,
                                context_buckets=None)),
}
# `digest` of epochs 0 and 1 of each pipeline on the `synthetic` corpus, computed with the
# per-example pipeline (before batches were read from memory): the same seed must keep giving
# the same batches, or a resumed run would see other data than the one it continues.
PINNED = {"train": "303bd0712eefdc4b", "plain": "e02f371d8b921522", "eval": "45c13be4eddc2fb7",
          "train/0of2": "d7913dd39f85757c", "train/1of2": "ab1fb4898f473c63"}


def _epochs(pipeline, epochs=(0, 1)):
    return [batch for epoch in epochs for batch in pipeline.batches(epoch)]


def _reference(source, vocab, *, batch_size, seed=0, shuffle=True, drop_remainder=False,
               relabel_entities=False, context_buckets=cnn_qa.CONTEXT_BUCKETS,
               top_k_sentences=None, process_index=0, process_count=1):
    """The per-example pipeline: each question read, shortened, relabelled and collated on
    its own."""
    top_k = cnn_qa.TopKSentences(vocab, top_k_sentences) if top_k_sentences else None
    relabel = cnn_qa.Relabel(vocab, seed) if relabel_entities else None
    _, count = cnn_qa.entity_block(vocab)

    def transform(e):
        e = {**e, "context": top_k(e["context"], e["query"])} if top_k else e
        e = relabel(e) if relabel else e
        mask = np.zeros(count, bool)
        mask[e["candidates"]] = True
        return {"context": e["context"], "query": e["query"], "answer": np.int32(e["answer"]),
                "candidate_mask": mask, "index": np.int32(e["index"])}

    return Pipeline(
        source, batch_size=batch_size, seed=seed, shuffle=shuffle,
        drop_remainder=drop_remainder, transform=transform,
        pad={"context": Pad(buckets=context_buckets),
             "query": Pad(buckets=cnn_qa.QUERY_BUCKETS)},
        lengths=np.array([len(transform(source[i])["context"]) for i in range(len(source))]),
        process_index=process_index, process_count=process_count)


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _as_processes(monkeypatch, index, count):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_equals_the_per_example_reference_and_its_pinned_digest(synthetic, name):
    vocab = load_vocab(synthetic)
    split, options = PIPELINES[name]
    source = synthetic.as_data_source(split)
    got = _epochs(cnn_qa.make_pipeline(source, vocab, **options))
    _assert_same_batches(got, _epochs(_reference(source, vocab, **options)))
    assert digest(got) == PINNED[name]


@pytest.mark.parametrize("index", [0, 1])
def test_each_process_reads_its_share_of_the_reference_batches(synthetic, monkeypatch, index):
    vocab = load_vocab(synthetic)
    split, options = PIPELINES["train"]
    source = synthetic.as_data_source(split)
    _as_processes(monkeypatch, index, 2)
    got = _epochs(cnn_qa.make_pipeline(source, vocab, **options))
    whole = _epochs(_reference(source, vocab, **options))
    assert [len(b["index"]) for b in got] == [4] * len(whole)
    _assert_same_batches(got, [{k: v[4 * index : 4 * index + 4] for k, v in b.items()}
                               for b in whole])
    assert digest(got) == PINNED[f"train/{index}of2"]


def test_resume_and_cache(synthetic):
    vocab = load_vocab(synthetic)
    source = synthetic.as_data_source("train")
    _, options = PIPELINES["train"]
    first = cnn_qa.make_pipeline(source, vocab, **options)
    cache = split_cache(source)
    assert cache is not None and cache.exists()  # written by the first pipeline
    again = cnn_qa.make_pipeline(source, vocab, **options)  # read from the cache
    _assert_same_batches(list(again.batches(1, 3)), list(first.batches(1))[3:])
