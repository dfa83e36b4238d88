"""The CNN cloze question-answering corpus of DeepMind (Hermann et al. 2015), entity-anonymised.

Input (docs/paper.md §5): `cnn/questions/{training,validation,test}/*.question`, one question a
file, blank-line separated: the article URL, the context, the query with one `@placeholder`, the
answer (`@entityN`), then one `@entityN:surface name` line per entity. The prepared splits are
`train`, `validation` and `test`, files in name order.

Tokenisation: the release comes tokenised and lowercased by its generator; tokens are split on
whitespace and not altered further. Entity markers stay tokens. Token
ids of a vocabulary built from the training split (`vocab.json` next to the prepared dataset)
are stored: `<pad>`, `<unk>`, `@placeholder`, then every entity marker `@entity0` ...
`@entity{E-1}` as one block (E is one more than the largest entity number in any split), then
words by frequency. `answer` and `candidates` (the distinct entities of the context, which
always include the answer) are stored as entity numbers `0..E-1`, the model's output classes.

`make_pipeline(..., relabel_entities=True)` re-shuffles entity ids per example as in the
attentive-reader papers: a random permutation of the E markers, fixed by the seed and the
example's index, applied to context, query, answer and candidates alike.

`make_pipeline` reads the split into memory once (`ArraySource`, cached as `<split>.npz` beside
the records: about 4 bytes a token) and does the per-example work (shortening, relabelling)
there once, so that a batch is a few fancy-indexing calls: decoding 64 records a batch took
longer than an accelerator's training step.

`make_pipeline(..., top_k_sentences=k)` shortens each context to its k sentences most relevant
to the query (`TopKSentences`), the "top-4 sentences" data of the recurrent-batch-norm setup.
It can remove every mention of the answer, so it caps the accuracy any model can reach:
`TopKSentences.answer_kept` measures that ceiling. The candidates stay the entities of the
whole document.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.common import DataError, manual_root, where
from lnorm.data.pipeline import (
    ArraySource,
    Batch,
    Example,
    Pad,
    Pipeline,
    Ragged,
    Source,
    split_cache,
)
from lnorm.data.vocab import PAD, UNK, VOCAB_FILE, Vocab

PLACEHOLDER = "@placeholder"
ENTITY_PREFIX = "@entity"
ENTITY = re.compile(r"@entity(\d+)")
SPLITS = {"train": "training", "validation": "validation", "test": "test"}  # prepared -> dir
SENTENCE_END = (".", "!", "?")  # tokens that end a sentence, for `TopKSentences`
CONTEXT_BUCKETS = (128, 256, 512, 768, 1024, 1536, 2048)
QUERY_BUCKETS = (16, 32, 48, 64)
_RAGGED = ("context", "query", "candidates")  # the variable-length fields of an example

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
CNN Q&A (DeepMind): download `cnn.tgz` (the "questions" archive of
https://cs.nyu.edu/~kcho/DMQA/, or generate it with https://github.com/google-deepmind/rc-data)
and extract it in the manual directory, so that it holds
`cnn/questions/training/*.question`, `cnn/questions/validation/*.question` and
`cnn/questions/test/*.question`.
"""


@dataclasses.dataclass(frozen=True)
class Question:
    """One parsed `.question` file (tokens as in the file)."""

    url: str
    context: list[str]
    query: list[str]
    answer: str
    entities: dict[str, str]  # marker -> surface name

    def entity_numbers(self) -> list[int]:
        """Every entity number the file mentions (text and entity lines)."""
        return _numbers([*self.context, *self.query, *self.entities])

    def candidates(self) -> list[int]:
        """The distinct entity numbers of the context, ascending: the answer candidates."""
        return sorted(set(_numbers(self.context)))


def _numbers(tokens: list[str]) -> list[int]:
    return [int(m.group(1)) for t in tokens if (m := ENTITY.fullmatch(t))]


def parse_question(path: str | os.PathLike) -> Question:
    """Parses and checks one `.question` file; a DataError names the file, line and problem."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: expected UTF-8 text ({e})") from None

    def fail(line: int, expected: str):
        got = lines[line - 1] if line <= len(lines) else "end of file"
        raise DataError(f"{where(path, line)}: expected {expected}; got {got[:80]!r}")

    if len(lines) < 9:
        fail(len(lines) + 1, "URL, context, query, answer and entity lines, blank-line separated")
    for line in (2, 4, 6, 8):
        if lines[line - 1].strip():
            fail(line, "a blank line")
    if not lines[0].startswith(("http://", "https://")):
        fail(1, "the article URL")
    context, query, answer = lines[2].split(), lines[4].split(), lines[6].strip()
    if not context:
        fail(3, "the context")
    if query.count(PLACEHOLDER) != 1:
        fail(5, f"a query with exactly one {PLACEHOLDER}")
    if not ENTITY.fullmatch(answer):
        fail(7, "the answer, an entity marker @entityN")
    entities = {}
    for line in range(9, len(lines) + 1):
        marker, sep, name = lines[line - 1].partition(":")
        if not sep or not ENTITY.fullmatch(marker):
            fail(line, "an entity line @entityN:name")
        entities[marker] = name
    if answer not in entities:
        fail(7, f"an answer listed in the entity lines ({', '.join(entities)})")
    if answer not in context:
        fail(7, "an answer that occurs in the context")
    return Question(lines[0].strip(), context, query, answer, entities)


def question_files(root: Path, name: str) -> list[Path]:
    """The `.question` files of one split directory, in name order."""
    paths = sorted((root / "cnn" / "questions" / name).glob("*.question"))
    if not paths:
        raise DataError(
            f"no .question files in {root / 'cnn' / 'questions' / name}\n"
            f"{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
        )
    return paths


def entity_block(vocab: Vocab) -> tuple[int, int]:
    """`(id of @entity0, number of entity markers E)`: markers are ids `offset .. offset+E-1`."""
    offset = vocab.index[f"{ENTITY_PREFIX}0"]
    count = 0
    while f"{ENTITY_PREFIX}{count}" in vocab:
        count += 1
    return offset, count


@dataclasses.dataclass(eq=False)
class CnnQaConfig(tfds.core.BuilderConfig):
    """Vocabulary size (specials and entity markers included; None keeps every word) and
    minimum count. The config name identifies a prepared dataset: give changed parameters a
    new name."""

    vocab_size: int | None = None
    min_count: int = 1


class CnnQa(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`context`, `query` (int32 token ids), `answer` (entity number), `candidates` (entity
    numbers of the context, ascending) and `index` (position in the split).

    Not registered with TFDS (no clash with its datasets); use it through
    `lnorm.data.common.prepare`. File order is kept, so `index` is the example's position.
    """

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [CnnQaConfig(name="default")]  # noqa: RUF012 (TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "context": ids,
                    "query": ids,
                    "answer": tfds.features.Scalar(dtype=np.int32),
                    "candidates": ids,
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        dirs = [f"cnn/questions/{d}" for d in SPLITS.values()]
        root = manual_root(dl_manager, dirs, MANUAL_DOWNLOAD_INSTRUCTIONS)
        files = {split: question_files(root, d) for split, d in SPLITS.items()}
        largest = -1  # the largest entity number, met on the way through every split

        def training_text() -> Iterator[list[str]]:
            nonlocal largest
            for path in files["train"]:
                q = parse_question(path)
                largest = max(largest, *q.entity_numbers())
                yield q.context
                yield q.query

        # Words ranked by training count (ties alphabetical), then placed after the specials,
        # whose entity block is known only once every split has been read.
        ranked = Vocab.build(training_text(), min_count=cfg.min_count).tokens[2:]
        for split in ("validation", "test"):  # checks these files before the long write
            for path in files[split]:
                largest = max(largest, *parse_question(path).entity_numbers())
        head = [PAD, UNK, PLACEHOLDER, *(f"{ENTITY_PREFIX}{k}" for k in range(largest + 1))]
        if cfg.vocab_size is not None and cfg.vocab_size < len(head):
            raise DataError(
                f"vocab_size={cfg.vocab_size} is below the {len(head)} specials and "
                f"entity markers the corpus in {root} needs"
            )
        taken = set(head)
        vocab = Vocab((head + [t for t in ranked if t not in taken])[: cfg.vocab_size])
        vocab.save(Path(self.data_dir) / VOCAB_FILE)
        return {split: self._generate_examples(paths, vocab) for split, paths in files.items()}

    def _generate_examples(self, paths: list[Path], vocab: Vocab):
        offset, _ = entity_block(vocab)
        for index, path in enumerate(paths):
            q = parse_question(path)
            yield (
                index,
                {
                    "context": np.asarray(vocab.encode(q.context), np.int32),
                    "query": np.asarray(vocab.encode(q.query), np.int32),
                    "answer": vocab.index[q.answer] - offset,
                    "candidates": np.asarray(q.candidates(), np.int32),
                    "index": index,
                },
            )


class Relabel:
    """Per-example entity re-shuffling: a permutation of the E entity markers drawn from
    `(seed, example index)`, applied to the context and query ids and to the answer and
    candidate entity numbers."""

    def __init__(self, vocab: Vocab, seed: int):
        self.offset, self.count = entity_block(vocab)
        self.seed = seed

    def permutations(self, indices: np.ndarray) -> np.ndarray:
        """`[n, E]` int32: the permutation of each example index in `indices`."""
        return np.array([np.random.default_rng([self.seed, int(i)]).permutation(self.count)
                         for i in indices], dtype=np.int32).reshape(len(indices), self.count)

    def ids(self, x: np.ndarray, perms: np.ndarray, owner: np.ndarray | int) -> np.ndarray:
        """Token ids `x` with each entity marker `offset + k` replaced by
        `offset + perms[owner, k]` (`owner`: the row of `perms`, the example, of each token)."""
        k = x - self.offset
        is_entity = (k >= 0) & (k < self.count)
        return np.where(is_entity, self.offset + perms[owner, np.where(is_entity, k, 0)], x)

    def __call__(self, example: Example) -> Example:
        perms = self.permutations([example["index"]])
        return {
            **example,
            "context": self.ids(example["context"], perms, 0),
            "query": self.ids(example["query"], perms, 0),
            "answer": perms[0, example["answer"]],
            "candidates": perms[0, example["candidates"]],
        }

    def apply(self, arrays: dict[str, np.ndarray | Ragged],
              chunk: int = 4096) -> dict[str, np.ndarray | Ragged]:
        """`__call__` over a whole split held as arrays (`context`, `query`, `candidates` as
        `Ragged`, `answer` and `index` as arrays), a chunk of examples at a time."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in (*_RAGGED, "answer")}
        for lo in range(0, len(arrays["index"]), chunk):
            hi = min(lo + chunk, len(arrays["index"]))
            perms = self.permutations(arrays["index"][lo:hi])
            for key in _RAGGED:
                bounds = arrays[key].offsets[lo : hi + 1]
                values = arrays[key].values[bounds[0] : bounds[-1]]
                owner = np.repeat(np.arange(hi - lo), np.diff(bounds))
                out[key].append(perms[owner, values] if key == "candidates" else
                                self.ids(values, perms, owner))
            out["answer"].append(perms[np.arange(hi - lo), arrays["answer"][lo:hi]])
        return {**arrays, "answer": np.concatenate(out["answer"]),
                **{k: Ragged(np.concatenate(out[k]), arrays[k].offsets) for k in _RAGGED}}


class TopKSentences:
    """Keeps the `k` sentences of a context that share the most distinct word types with the
    query, in document order.

    Sentences end after each `.`, `!` or `?` token (a trailing piece without one is a sentence
    too). A sentence's score is the number of distinct query token ids it contains, the
    placeholder, padding and sentence-end tokens not counted; ties go to the earlier sentence.
    The recurrent-batch-norm setup ships its top-4 data without the rule that made it, so this
    one is ours. Contexts of at most `k` sentences are kept whole.
    """

    def __init__(self, vocab: Vocab, k: int):
        if k < 1:
            raise ValueError(f"top_k_sentences={k}: expected a positive number of sentences")
        self.k = k
        self.ends = np.array([vocab.index[t] for t in SENTENCE_END if t in vocab], np.int32)
        self.ignored = np.concatenate(
            [self.ends, [vocab.pad_id, vocab.index[PLACEHOLDER]]]).astype(np.int32)

    def spans(self, context: np.ndarray, query: np.ndarray) -> list[tuple[int, int]]:
        """The `(start, stop)` token spans of the kept sentences, in document order."""
        stops = np.flatnonzero(np.isin(context, self.ends)) + 1
        bounds = [0, *stops.tolist()]
        if bounds[-1] < len(context):
            bounds.append(len(context))
        spans = list(itertools.pairwise(bounds))
        if len(spans) <= self.k:
            return spans
        words = np.setdiff1d(np.unique(query), self.ignored)
        scores = [np.isin(words, context[a:b]).sum() for a, b in spans]
        best = sorted(np.argsort(-np.asarray(scores), kind="stable")[: self.k])
        return [spans[i] for i in best]

    def __call__(self, context: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The shortened context."""
        return np.concatenate([context[a:b] for a, b in self.spans(context, query)])

    def answer_kept(self, source: Source, answer_offset: int) -> float:
        """The fraction of `source`'s questions whose answer survives the filtering: the
        highest accuracy a reader of the shortened contexts can reach. Reads the split's
        in-memory arrays (`split_arrays`, cached), as the pipelines do."""
        arrays = split_arrays(source)
        context, query, answer = arrays["context"], arrays["query"], arrays["answer"]
        kept = [answer_offset + answer[i] in self(context[i], query[i])
                for i in range(len(answer))]
        return float(np.mean(kept))


def split_arrays(source: Source) -> dict[str, np.ndarray | Ragged]:
    """A split's questions in memory, as the pipelines read them: the token fields `Ragged`,
    from the split's `.npz` cache after the first time (`split_cache`)."""
    return dict(ArraySource.from_source(source, ragged=_RAGGED, cache=split_cache(source)).arrays)


def make_pipeline(
    source: Source,
    vocab: Vocab,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
    relabel_entities: bool = False,
    context_buckets: tuple[int, ...] | None = CONTEXT_BUCKETS,
    query_buckets: tuple[int, ...] | None = QUERY_BUCKETS,
    bucket_by_length: bool = True,
    top_k_sentences: int | None = None,
) -> Pipeline:
    """Batches of questions: `context [B, L]` and `query [B, Q]` int32 ids with `_mask` and
    `_length`, `answer [B]` (entity number), `candidate_mask [B, E]` (the document's entities)
    and `index [B]`. `relabel_entities` re-shuffles entity ids per example (from `seed`);
    `top_k_sentences` shortens each context to its k sentences most relevant to the query
    (`TopKSentences`); `bucket_by_length` groups questions of similar (shortened) context
    length.

    The split is read into memory (from its `.npz` cache after the first time, see
    `split_cache`) and shortened and relabelled there once: both depend on the stored example
    and the seed only, so every epoch sees the same questions as it would per example."""
    arrays = split_arrays(source)
    for key in ("answer", "index"):  # TFDS decodes int32 scalars as int64
        arrays[key] = arrays[key].astype(np.int32)
    if top_k_sentences is not None:
        top_k = TopKSentences(vocab, top_k_sentences)
        context, query = arrays["context"], arrays["query"]
        arrays["context"] = Ragged.from_rows(
            [top_k(context[i], query[i]) for i in range(len(context))])
    if relabel_entities:
        arrays = Relabel(vocab, seed).apply(arrays)
    _, count = entity_block(vocab)

    def candidate_mask(batch: Batch) -> Batch:
        candidates, present = batch["candidates"], batch["candidates_mask"]
        mask = np.zeros((len(candidates), count), dtype=bool)
        mask[np.nonzero(present)[0], candidates[present]] = True
        return {k: v for k, v in batch.items() if not k.startswith("candidates")} | {
            "candidate_mask": mask}

    return Pipeline(
        ArraySource(arrays),
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        batch_transform=candidate_mask,
        pad={"context": Pad(buckets=context_buckets), "query": Pad(buckets=query_buckets),
             "candidates": Pad()},
        lengths=arrays["context"].lengths if bucket_by_length else None,
    )


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes `cnn/questions/{training,validation,test}/*.question` with `num_examples`
    training questions (validation and test: a quarter each, at least 2); see
    `_synthetic_question` for what a question looks like."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    held_out = max(2, num_examples // 4)
    for name, size in (("training", num_examples), ("validation", held_out), ("test", held_out)):
        split_dir = root / "cnn" / "questions" / name
        split_dir.mkdir(parents=True, exist_ok=True)
        for i in range(size):
            text = _synthetic_question(rng, f"http://example.com/synthetic/{name}/{i}")
            (split_dir / f"{i:06d}.question").write_text(text, encoding="utf-8")
    return root


def _synthetic_question(rng: np.random.Generator, url: str) -> str:
    """A context of 3-6 sentences "@entityA <verb> @entityB in <place> ." over 3-6 entities
    numbered at random (as in the release); the query repeats one sentence with one of its two
    entities replaced by `@placeholder`, so matching the query against the context finds the
    answer."""
    verbs = ["met", "called", "praised", "sued", "hired", "visited", "beat", "thanked"]
    places = ["paris", "london", "court", "washington", "the stadium", "the city", "tokyo"]
    names = ["smith", "jones", "garcia", "chen", "kumar", "okafor", "novak", "silva", "kim"]
    numbers = rng.choice(12, size=int(rng.integers(3, 7)), replace=False)
    markers = [f"{ENTITY_PREFIX}{k}" for k in numbers]
    sentences = []
    for _ in range(int(rng.integers(3, 7))):
        a, b = rng.choice(markers, size=2, replace=False)
        place = str(rng.choice(places)).split()
        sentences.append([str(a), str(rng.choice(verbs)), str(b), "in", *place, "."])
    target = sentences[int(rng.integers(len(sentences)))]
    slot = int(rng.choice([0, 2]))
    query = [PLACEHOLDER if j == slot else t for j, t in enumerate(target)]
    mentioned = sorted({t for sent in sentences for t in sent if ENTITY.fullmatch(t)})
    lines = [
        url,
        "",
        " ".join(t for sent in sentences for t in sent),
        "",
        " ".join(query),
        "",
        target[slot],
        "",
        *(f"{m}:{rng.choice(names)}" for m in mentioned),
    ]
    return "\n".join(lines) + "\n"
