"""MR-like and CR-like sentiment probes in SentEval's layout, from the VADER release's snippets.

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python -m scripts.make_senteval_vader --sdist /tmp/vader/vaderSentiment-3.3.2.tar.gz --out DIR

No PyPI package ships the SentEval data. The vaderSentiment 3.3.2 source distribution (not the
wheel; MIT) holds Hutto & Gilbert's (ICWSM 2014) evaluation sets in
`additional_resources/hutto_ICWSM_2014.tar.gz`: 10,605 Rotten Tomatoes movie-review snippets
(`movieReviewSnippets_GroundTruth.txt`) and 3,708 Amazon product-review sentences
(`amazonReviewSnippets_GroundTruth.txt`), each with the mean rating of ~20 human raters on
-4..4. This script labels each one by the sign of that rating (rating 0 left out; `--margin M`
leaves out |rating| <= M), tokenises it like the MR release (lowercase, punctuation split off:
`scripts.make_bookcorpus_gutenberg.tokenize_text`, the tokenisation of the Gutenberg training
text) and writes, in latin-1 as SentEval reads them:

    DIR/MR/rt-polarity.pos, DIR/MR/rt-polarity.neg    (movie snippets)
    DIR/CR/custrev.pos, DIR/CR/custrev.neg            (Amazon snippets)
    DIR/README.txt                                    (what this is)

so that `data.senteval_dir=DIR` runs the real `senteval` stage on them. They are NOT MR and CR:
the movie snippets are close to MR's sentences but labelled by crowd ratings instead of the
review's verdict, the Amazon ones are other products' reviews than CR's. Results on them are not
comparable with the paper's Table 3.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from lnorm.data.common import write_folder_once
from scripts.make_bookcorpus_gutenberg import tokenize_text

INNER = "hutto_ICWSM_2014.tar.gz"
SETS = {  # snippet file -> (SentEval folder, negative file, positive file)
    "movieReviewSnippets_GroundTruth.txt": ("MR", "rt-polarity.neg", "rt-polarity.pos"),
    "amazonReviewSnippets_GroundTruth.txt": ("CR", "custrev.neg", "custrev.pos"),
}
README = """\
NOT the SentEval MR and CR data: stand-ins written by scripts/make_senteval_vader.py from the
vaderSentiment 3.3.2 sdist (Hutto & Gilbert, ICWSM 2014). MR/ holds Rotten Tomatoes snippets,
CR/ Amazon review sentences, labelled by the sign of their mean human rating (-4..4; |rating|
<= {margin} left out), tokenised and lowercased, latin-1.
"""


def _member(tar: tarfile.TarFile, suffix: str) -> bytes:
    for info in tar.getmembers():
        if info.isfile() and info.name.endswith(suffix):
            return tar.extractfile(info).read()
    raise SystemExit(f"error: {tar.name}: no member ending in {suffix}; expected the "
                     "vaderSentiment 3.3.2 source distribution")


def read_snippets(sdist: Path) -> dict[str, bytes]:
    """The ground-truth files of `SETS` from the sdist's nested tarball."""
    try:
        with tarfile.open(sdist) as outer:
            inner = _member(outer, f"additional_resources/{INNER}")
        with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
            return {name: _member(tar, f"/{name}") for name in SETS}
    except (OSError, tarfile.TarError) as e:
        raise SystemExit(f"error: {sdist}: not a readable .tar.gz ({e})") from None


def labelled(raw: bytes, name: str, margin: float) -> tuple[list[str], list[str]]:
    """(negative, positive) tokenised sentences of one `id<TAB>rating<TAB>text` file."""
    negative, positive = [], []
    for line_no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError(f"3 tab-separated fields, got {len(fields)}")
            rating = float(fields[1])
        except ValueError as e:
            raise SystemExit(f"error: {name}:{line_no}: expected id, rating, text: {e}") from None
        text = " ".join(tokenize_text(fields[2]))
        if text and abs(rating) > margin:
            (positive if rating > 0 else negative).append(text)
    return negative, positive


def write_probes(files: dict[str, bytes], out: Path, margin: float) -> list[str]:
    """Writes the SentEval folders into `out` (a temporary folder renamed when complete);
    returns one summary line per file."""
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another --out")
    lines = []

    def write(tmp: Path) -> None:
        for name, (folder, neg_file, pos_file) in SETS.items():
            (tmp / folder).mkdir()
            for file, sentences in zip((neg_file, pos_file), labelled(files[name], name, margin),
                                       strict=True):
                text = "\n".join(sentences) + "\n"
                (tmp / folder / file).write_bytes(text.encode("latin-1", errors="replace"))
                lines.append(f"{folder}/{file}: {len(sentences)} sentences (from {name})")
        (tmp / "README.txt").write_text(README.format(margin=margin), encoding="utf-8")

    write_folder_once(out, write)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", required=True, type=Path,
                        help="vaderSentiment-3.3.2.tar.gz (pip download --no-binary :all:)")
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="leave out snippets whose |mean rating| is at most this")
    args = parser.parse_args(argv)
    for line in write_probes(read_snippets(args.sdist), args.out, args.margin):
        print(line)
    print(f"wrote MR-like and CR-like probes (NOT MR/CR) to {args.out}; use them with\n"
          f"  data.senteval_dir={args.out.resolve()}  (or LNORM_SENTEVAL_DIR=... for "
          f"experiments.evaluate RUN_DIR --stage senteval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
