"""Build an unlabeled English corpus offline from the docstrings of installed Python packages.

Distilling a text model (e.g. MiniLM) needs sentences, not labels: the teacher labels them. Nothing can
be downloaded here, but every installed package carries prose in its docstrings. This script reads the
``.py`` files of the installed distributions and of the standard library with ``ast`` (nothing is
imported or executed) and the package descriptions in ``*.dist-info/METADATA``, splits them into
sentences, keeps the ones that look like English prose and writes one sentence a line.

    python benchmarks/build_text_corpus.py corpus.txt --max-sentences 4000
    python benchmarks/build_text_corpus.py heldout.txt --packages scipy,sklearn --max-sentences 200
    python benchmarks/build_text_corpus.py corpus.txt --augment 1 --crop 1 --vocab MODEL/vocab.txt

Docstrings are technical English. ``--augment K`` adds K variants of each sentence in which a share of
the content words is replaced by random whole words of ``--vocab`` (e.g. the model's WordPiece
vocabulary): the grammar stays, the vocabulary widens beyond software, and the teacher labels the
variants like any other text (word-replacement augmentation as in TinyBERT, with random words instead
of a language model's suggestions). ``--crop K`` adds K short spans (2-8 words) of each sentence, because
real inputs are often short and docstring sentences rarely are.

Ship the script, not the corpus: the output depends on what is installed."""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional

# Markers of code, markup or reference text rather than prose.
_CODE = re.compile(r"(>>>|\.\.\.|::|==|!=|<=|>=|->|\(\)|\[\]|\{|\}|`|\\|\$|#|\|| = |_[a-z]+_|\w+\(|https?:|www\.)")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_SECTION = re.compile(r"^\s*(Parameters|Returns|Raises|Examples?|Notes?|See Also|References|Yields|Attributes|"
                      r"Args|Arguments|Keyword Arguments|Methods|Warnings?|Todo)\s*:?\s*$", re.I)


def docstrings(path: Path) -> Iterator[str]:
    """Docstrings of a module, its classes and functions (parsed, never imported)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def paragraphs(doc: str) -> Iterator[str]:
    """Prose paragraphs of a docstring: stops at the first section header (Parameters, Examples …) and
    skips indented blocks, field lists and underlines."""
    block: list[str] = []
    for line in doc.splitlines():
        if _SECTION.match(line):
            break
        stripped = line.strip()
        if not stripped or line.startswith((" ", "\t")) or set(stripped) <= set("-=~^*") \
                or stripped.startswith((":", "*", "-", "+", "..")):
            if block:
                yield " ".join(block)
            block = []
            continue
        block.append(stripped)
    if block:
        yield " ".join(block)


def is_prose(sentence: str, min_words: int, max_words: int) -> bool:
    """An English-looking sentence: capitalised, ends with a full stop, mostly plain words, no code."""
    if not (sentence[:1].isupper() and sentence.endswith(".")) or _CODE.search(sentence):
        return False
    words = sentence.split()
    if not (min_words <= len(words) <= max_words):
        return False
    plain = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:()\"'")))
    return plain / len(words) >= 0.85 and sum(c.isdigit() for c in sentence) <= 3


def metadata_text(path: Path) -> Iterator[str]:
    """The long description of a ``METADATA`` file (after the header block), as one document."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    _, _, body = text.partition("\n\n")
    if body.strip():
        yield body


def sentences(files: Iterable[Path], min_words: int = 3, max_words: int = 40) -> Iterator[str]:
    for path in files:
        docs = metadata_text(path) if path.name == "METADATA" else docstrings(path)
        for doc in docs:
            for para in paragraphs(doc):
                for s in _SPLIT.split(para):
                    s = " ".join(s.split())
                    if is_prose(s, min_words, max_words):
                        yield s


def package_files(packages: Optional[list[str]], exclude: list[str], sources: list[str]) -> list[Path]:
    """Files to read: ``.py`` under site-packages (top-level folders in ``packages`` only, when given),
    the standard library's ``.py`` (source ``stdlib``) and ``*.dist-info/METADATA`` (source ``metadata``).
    Test folders are skipped: their docstrings describe test cases, not things."""
    site = Path(sysconfig.get_paths()["purelib"])
    files: list[Path] = []
    if "packages" in sources:
        roots = sorted(p for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".egg-info"))
                       and not p.name.startswith(("_", ".")))
        if packages:
            roots = [p for p in roots if p.name in packages]
        roots = [p for p in roots if p.name not in exclude]
        files += [f for r in roots for f in sorted(r.rglob("*.py")) if not _is_test(f)]
    if "metadata" in sources:
        for meta in sorted(site.glob("*.dist-info/METADATA")):
            name = meta.parent.name.split("-")[0].lower()
            if (not packages or name in packages) and name not in exclude:
                files.append(meta)
    if "stdlib" in sources and not packages:
        std = Path(sysconfig.get_paths()["stdlib"])
        files += [f for f in sorted(std.rglob("*.py")) if site not in f.parents and not _is_test(f)
                  and "site-packages" not in f.parts]
    return files


def _is_test(path: Path) -> bool:
    return any(p.lower() in ("test", "tests", "testing", "idle_test") for p in path.parts[:-1]) or \
        path.name.startswith("test_")


_STOP = set("""a an the and or but if then else of to in on at by for with from as is are was were be been being
this that these those it its not no can may must will would should could has have had do does did than so such
into onto over under when where which who whom whose what why how all any each every some more most other only""".split())


def read_vocab(path: Path) -> list[str]:
    """Whole lower-case English-looking words of a vocabulary file (one token a line; WordPiece
    continuations ``##x`` and special tokens are skipped)."""
    words = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        w = line.strip()
        if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower() and w not in _STOP:
            words.append(w)
    return words


def augment(sentence: str, words: list[str], share: float, rng: random.Random) -> str:
    """``sentence`` with about ``share`` of its content words (not the first word, not stop words)
    replaced by random ``words``; capitals and punctuation around a word are kept."""
    tokens = sentence.split()
    for i in range(1, len(tokens)):
        core = tokens[i].strip(".,;:!?()\"'")
        if not core.isalpha() or core.lower() in _STOP or rng.random() >= share:
            continue
        new = rng.choice(words)
        if core[0].isupper():
            new = new.capitalize()
        tokens[i] = tokens[i].replace(core, new, 1)
    return " ".join(tokens)


def crop(sentence: str, rng: random.Random, longest: int = 8) -> str:
    """A short span (2 to ``longest`` words) of ``sentence`` as a sentence of its own: real inputs are
    often short ("Stop.", "Where is it?"), docstring sentences rarely are."""
    words = [w.strip(".,;:!?()\"'") for w in sentence.split()]
    words = [w for w in words if w]
    n = rng.randint(2, max(2, min(longest, len(words))))
    start = rng.randint(0, max(0, len(words) - n))
    span = " ".join(words[start:start + n])
    return span[:1].upper() + span[1:] + rng.choice(".....?!")


def build(out: Path, max_sentences: int, seed: int, packages: Optional[list[str]], exclude: list[str],
          min_words: int, max_words: int, sources: Optional[list[str]] = None, n_augment: int = 0,
          vocab: Optional[Path] = None, share: float = 0.3, n_crop: int = 0) -> int:
    """Write up to ``max_sentences`` unique prose sentences, plus ``n_augment`` word-replaced variants
    and ``n_crop`` short spans of each, shuffled with ``seed``; returns the number of lines written."""
    seen: set[str] = set()
    found: list[str] = []
    for s in sentences(package_files(packages, exclude, sources or ["packages", "stdlib", "metadata"]),
                       min_words, max_words):
        key = s.lower()
        if key not in seen:
            seen.add(key)
            found.append(s)
    rng = random.Random(seed)
    rng.shuffle(found)
    found = found[:max_sentences]
    if n_augment:
        words = read_vocab(vocab) if vocab else sorted({w.lower() for s in found for w in _WORD.findall(s)
                                                         if len(w) >= 3 and w.lower() not in _STOP})
        found += [augment(s, words, share, rng) for s in found for _ in range(n_augment)]
    if n_crop:
        found += [crop(s, rng) for s in found[:max_sentences] for _ in range(n_crop)]
    if n_augment or n_crop:
        rng.shuffle(found)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(found) + "\n", encoding="utf-8")
    return len(found)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="text file to write (one sentence a line)")
    ap.add_argument("--max-sentences", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--packages", default="", help="comma-separated top-level package folders (default: all)")
    ap.add_argument("--exclude", default="", help="comma-separated package folders to leave out")
    ap.add_argument("--sources", default="packages,stdlib,metadata",
                    help="comma-separated: packages (site-packages docstrings), stdlib, metadata (package descriptions)")
    ap.add_argument("--augment", type=int, default=0, help="variants per sentence with words replaced (default 0)")
    ap.add_argument("--vocab", type=Path, help="word list for --augment, e.g. the model's vocab.txt (default: "
                                               "the corpus's own words)")
    ap.add_argument("--replace", type=float, default=0.3, help="share of content words replaced in a variant")
    ap.add_argument("--crop", type=int, default=0, help="short spans (2-8 words) added per sentence (default 0)")
    ap.add_argument("--min-words", type=int, default=3)
    ap.add_argument("--max-words", type=int, default=40)
    a = ap.parse_args(argv)
    pkgs = [p for p in a.packages.split(",") if p] or None
    n = build(a.out, a.max_sentences, a.seed, pkgs, [p for p in a.exclude.split(",") if p], a.min_words, a.max_words,
              [x for x in a.sources.split(",") if x], a.augment, a.vocab, a.replace, a.crop)
    print(f"wrote {n} sentences to {a.out}", file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    raise SystemExit(main())
