"""Real English text that is always available offline, and a simple word-level tokenizer.

The corpus is the prose of Python's own documentation that ships inside the standard library as
``pydoc_data.topics`` (the text ``help("assert")`` prints): about 80 topics of the language
reference, some 460 000 characters of edited technical English. It comes with every CPython
installation, so nothing is downloaded and the experiments run on a machine without network
access. Its contents change slightly between Python versions, so the exact numbers of the
experiments built on it do too.

:func:`english_sentences` keeps the prose paragraphs (it drops headings, grammar productions,
code examples and tables), strips the reStructuredText markup (``"``, ``*``, footnote marks) and
splits the paragraphs into sentences. :class:`WordTokenizer` is word-level with a capped
vocabulary: lower-cased words, numbers and punctuation marks are tokens; the ``vocab_size − 2``
most frequent are kept and the rest map to ``<unk>``. Word level (rather than characters) keeps
sentences between 1 and 50 tokens long, the range of the paper's LM1B experiment (Dumoulin et al.
§5.2), and short enough for a small GRU to learn their length distribution on a CPU in minutes;
capping the vocabulary keeps the softmax small and every kept word seen many times.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from pbde._validation import check_tensor
from pbde.io import PAD_TOKEN

__all__ = ["english_sentences", "WordTokenizer", "bpe_tokenizer"]

_UNDERLINE = re.compile(r"[*=\-~^+]{3,}")
_CODE_MARKS = ("::=", ">>>", "+--", "|", "...")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_TOKEN = re.compile(r"[a-z_][a-z0-9_]*(?:'[a-z]+)?|\d+|\S")


def english_sentences() -> list[str]:
    """The sentences of the prose in ``pydoc_data.topics``, in a fixed order.

    Returns:
        Sentences as strings (about 2 900 on CPython 3.11), topics in alphabetical order.

    Raises:
        RuntimeError: if this Python installation lacks ``pydoc_data`` (some minimal Linux
            packages strip it; install the full standard library, e.g. ``libpython3-stdlib``).

    Example:
        >>> sentences = english_sentences()
        >>> len(sentences) > 1000
        True
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # pragma: no cover - depends on the Python installation
        raise RuntimeError(
            "pbde.text needs the standard library module pydoc_data (Python's documentation "
            "topics), which this Python installation does not have."
        ) from error
    sentences = []
    for key in sorted(topics):
        for paragraph in _prose_paragraphs(topics[key]):
            sentences.extend(s for s in _SENTENCE_END.split(_strip_markup(paragraph)) if s)
    return sentences


def _prose_paragraphs(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    paragraphs = []
    for block in blocks:
        if _UNDERLINE.fullmatch(block[-1].strip()):  # a heading and its underline
            continue
        paragraph = " ".join(line.strip() for line in block)
        if any(mark in paragraph for mark in _CODE_MARKS):  # grammar, doctests, tables
            continue
        if not re.search(r"[.?!:]$", paragraph):  # code and lists of names do not end so
            continue
        letters = sum(c.isalpha() or c.isspace() for c in paragraph)
        if letters < 0.85 * len(paragraph):  # mostly symbols: code
            continue
        paragraphs.append(paragraph)
    return paragraphs


def _strip_markup(paragraph: str) -> str:
    for fancy, plain in (("’", "'"), ("‘", "'"), ("“", ""), ("”", ""), ("—", " - ")):
        paragraph = paragraph.replace(fancy, plain)
    paragraph = re.sub(r"\[\d+\]", "", paragraph)  # footnote marks
    paragraph = paragraph.replace('"', "").replace("*", "")  # literal and emphasis markup
    return re.sub(r"\s+", " ", paragraph).strip()


class WordTokenizer:
    """Lower-cased word-level tokens with a capped vocabulary; id 0 is ``<eos>``, 1 ``<unk>``.

    Words (identifiers such as ``__init__`` count as words), numbers and single punctuation
    marks are tokens. The vocabulary holds ``<eos>``, ``<unk>`` and the ``vocab_size − 2`` most
    frequent tokens of the sentences it is built from (ties in alphabetical order).

    Args:
        sentences: the text to build the vocabulary from.
        vocab_size: number of ids, the two special tokens included, >= 3.

    Example:
        >>> tok = WordTokenizer(["The cat sat.", "The dog sat."], vocab_size=5)
        >>> tok.words
        ['<eos>', '<unk>', '.', 'sat', 'the']
        >>> x = tok.encode(["the dog sat .", "the cat"])
        >>> x
        tensor([[ 4,  1,  3,  2,  0],
                [ 4,  1,  0, -1, -1]])
        >>> tok.decode(x)
        ['the <unk> sat .', 'the <unk>']
    """

    EOS = 0
    UNK = 1

    def __init__(self, sentences: Iterable[str], vocab_size: int = 1000):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
            raise ValueError(f"'vocab_size' must be an int >= 3. Got {vocab_size!r} instead.")
        if isinstance(sentences, str):
            raise TypeError("'sentences' must be an iterable of strings, not one string.")
        counts = Counter()
        for sentence in sentences:
            counts.update(self.tokenize(sentence))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))[: vocab_size - 2]
        self.words = ["<eos>", "<unk>", *ranked]
        self._ids = {word: i for i, word in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        """Number of ids (``<eos>`` and ``<unk>`` included); may be below the cap for small text."""
        return len(self.words)

    @staticmethod
    def tokenize(sentence: str) -> list[str]:
        """The tokens of one sentence (lower-cased words, numbers, punctuation marks)."""
        if not isinstance(sentence, str):
            raise TypeError(f"'sentence' must be a str. Got {type(sentence).__name__}.")
        return _TOKEN.findall(sentence.lower())

    def encode(self, sentences: Sequence[str], *, max_length: int | None = None) -> torch.Tensor:
        """Token ids with ``<eos>`` appended, padded with ``PAD_TOKEN`` (−1) to the longest.

        Args:
            sentences: the sentences.
            max_length: drop sentences with more tokens than this, EOS included (``None``:
                keep all).

        Returns:
            ``LongTensor`` of shape ``(n, width)`` (the items of
            :class:`~pbde.densities.Autoregressive`).

        Raises:
            ValueError: if no sentence is left.
        """
        if isinstance(sentences, str):
            raise TypeError("'sentences' must be a sequence of strings, not one string.")
        rows = [
            [self._ids.get(word, self.UNK) for word in self.tokenize(s)] + [self.EOS]
            for s in sentences
        ]
        if max_length is not None:
            rows = [row for row in rows if len(row) <= max_length]
        if not rows:
            raise ValueError(
                f"'sentences' must leave at least one sentence (max_length={max_length!r})."
            )
        width = max(len(row) for row in rows)
        return torch.tensor([row + [PAD_TOKEN] * (width - len(row)) for row in rows])

    def decode(self, x: torch.Tensor) -> list[str]:
        """Text of each padded row of ``x`` (``(n, width)``), without ``<eos>`` and padding."""
        check_tensor("x", x)
        if x.ndim != 2:
            raise ValueError(f"'x' must have shape (n, width). Got {tuple(x.shape)}.")
        bad = (x != PAD_TOKEN) & ((x < 0) | (x >= self.vocab_size))
        if bool(bad.any()):
            raise ValueError(
                f"'x' must hold ids in [0, {self.vocab_size - 1}] or {PAD_TOKEN}. "
                f"Got {int(x[bad][0])}."
            )
        texts = []
        for row in x.tolist():
            words = [self.words[t] for t in row if t not in (PAD_TOKEN, self.EOS)]
            texts.append(" ".join(words))
        return texts


def bpe_tokenizer(sentences: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained on ``sentences``, as a Hugging Face tokenizer.

    For language models built from a config on a machine without network access (tests,
    tutorials, benchmarks): the same kind of tokenizer GPT-2 uses (byte-level BPE, so merges cross
    word boundaries with their leading space, and every text can be encoded), with
    ``<|endoftext|>`` as its EOS, BOS and padding token (id 0) and a ChatML-style chat template.
    ``save_pretrained`` writes it next to a model.

    Needs the ``hf`` extra (``transformers`` and its ``tokenizers``).

    Args:
        sentences: the training text.
        vocab_size: the vocabulary's size, >= 300 (the 256 bytes, the special token, merges).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Example:
        >>> tok = bpe_tokenizer(english_sentences()[:500], vocab_size=400)
        >>> tok.eos_token_id, tok.decode(tok("The name")["input_ids"])
        (0, 'The name')
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"'vocab_size' must be an int >= 300. Got {vocab_size!r} instead.")
    if isinstance(sentences, str):
        raise TypeError("'sentences' must be an iterable of strings, not one string.")
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('bpe_tokenizer needs transformers: pip install "pbde[hf]"') from error
    special = "<|endoftext|>"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(sentences), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=special, bos_token=special, pad_token=special
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
