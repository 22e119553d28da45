"""The hand-written pages (README.md, docs/*.md, gpt-2/README.md, bench/README.md) rendered from templates: a
template under docs/templates/, at the page's own path, holds the page's prose with a field {{name}} wherever a
measured number goes, and a value function (lib/page_values.py, bench/pages.py) reads the number from its committed
file and formats it. The page is the template with its fields filled, so a regenerated result re-renders its page.

Every other number in a template is static: outside code spans and code blocks (commands, paths, identifiers) it
must lie inside a STATIC entry, a regex for text whose number comes from no result (a constant, a name, history),
with its reason. uncovered() finds the numbers that are neither; the tests keep it empty and every entry in use.
"""
import re
from pathlib import Path

TEMPLATES = Path("docs/templates")
FIELD = re.compile(r"\{\{([a-z][a-z0-9_]*)\}\}")


def template_path(page) -> Path:
    """Where a page's template lives, relative to the repository root."""
    return TEMPLATES / page


def render(template: str, values: dict) -> str:
    """The template with each {{name}} replaced by values[name]; a field without a value is an error."""
    missing = sorted(set(FIELD.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for the template fields {missing}")
    return FIELD.sub(lambda m: values[m.group(1)], template)


def render_page(root: Path, page, value_functions) -> str:
    """A page from its template and the values its functions read under root (each returns a dict of field: text;
    two functions may not name one field)."""
    values = {}
    for function in value_functions:
        found = function(root)
        twice = set(found) & set(values)
        if twice:
            raise KeyError(f"{function.__name__} names fields another value function of {page} names: {sorted(twice)}")
        values.update(found)
    return render((root / template_path(page)).read_text(), values)


# --- the numbers a template states itself -----------------------------------------------------------------------------

# a number: digits with optional thousands commas, decimals and exponent (3e-2), not part of a name (fp32, gpt-2,
# llama2_7b, R^2)
NUMBER = re.compile(r"(?<![\w^.])(?<![A-Za-z]-)\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")
EVERY = "*"  # a STATIC entry for every page
STATIC = [  # (page, regex over the template's text with its whitespace collapsed, why its numbers come from no result)
    (EVERY, r"Gemma 3 270M|Gemma 3\b|Gemma 2/3|gemma3-270m|LLaMA-2-7B|llama2-7b-2layers|llama-30x576|"
     r"SmolLM2-135M-Instruct", "model names"),
    (EVERY, r"3-D|top-1/2/3|\b[01]-based|2-core|2 cores", "names: plot kinds, statistics, indexing, the machine"),
    (EVERY, r"count(?:s|ing)? (?:layers|blocks)(?: \(blocks\)| and layers)? from [01]|"
     r"counted from 1|counts from 0|\(layer \+ 1\)|0\.\.n_layer-1|\(-1, the default|layer 5 \(the sixth\)|"
     r"the paper's layer 2 of 32, counted from 1: layer 1 here",
     "the layer numbering (lib/layer_numbering.py) and the paper's 1-based layer"),
    (EVERY, r"\b[48]-bit|8- and 4-bit|50% (?:smallest|magnitude pruning|pruning|pruned)",
     "the compression methods (lib/compression.py)"),
    ("README.md", r"ICLR 2025|arXiv 2502\.06415", "the paper's venue and arXiv id"),
    ("docs/figures.md", r"float16 \(65,504\)|\(exit status 2\)",
     "float16's largest finite value (torch.finfo), the exit status of a user error (lib/errors.py)"),
    ("docs/findings.md", r"at position 0|queries 1\.\.T-1", "the first position; the queries with a choice of key"),
    ("docs/figures.md", r"such as 897\.548 in its fifth digit, which can carry a printed 897\.5 across to 897\.6",
     "an illustration of rounding across a boundary (a value of the default model's figures, as the re-check saw it)"),
    ("gpt-2/README.md", r"0\.05% of the documents become val \(seed 2357\)|\(position 0, or|queries 1\.\.T-1",
     "nanoGPT's OpenWebText split (data/openwebtext/prepare.py); the first position; the queries with a choice"),
    ("docs/findings.md", r"Queipo-de-Llano et al\. 2025|1 for orthogonal tokens of one\s?norm, 0 for rank one|exceeds 0\.3\. The valley|"
     r"below 0\.5 x the largest, its depth 1 - lowest|by the 0\.5\s?x rule|passes 0\.3",
     "a citation; the entropy's range and the valley's definition (lib/outliers.py, lib/paper_figures/valley.py)"),
    ("README.md", r"Python 3\.10\+|torch pinned to 2\.13\.0", "supported versions (pyproject.toml, setup.sh)"),
    ("docs/api.md", r"transformers 4\.57\.x and 5\.x", "supported versions (pyproject.toml, .ci/run)"),
    ("docs/figures.md", r"models at 4096 tokens|from 4 tokens|query 0 can only attend to key 0",
     "the paper's calibration length; properties of the rule and of causal attention"),
    ("bench/README.md", r"\| <= 1\.1 \| <= 1\.0 \||\(<= 1\.1x\)|<= 1\.1x, memory <= 1\.0x|>= 0\.95x plain|"
     r">= 0\.5x default|about 8 minutes|1e-5", "the benchmarks' goals and tolerances"),
    ("bench/README.md", r"had not finished in 17 minutes", "history: an attempt on a loaded machine"),
    ("bench/README.md", r"had given 2\.17", "history: a run on a loaded machine"),
    ("bench/README.md", r"\(4096 tokens, bf16\)|random-init 4-layer model|at 4096 tokens|\(12 x 768, 1024 tokens, batch 16,|"
     r"6 N \+ 12 L d T|exit status 1|more than 10% of the CPUs|vary by up to 15%",
     "the GPU check's settings and the FLOPs formula (bench/gpu_check.py), an exit status, the load limit "
     "(lib/machine_load.py), the machine's spread of single runs"),
    ("gpt-2/README.md", r"paper Section 5|Qiu et al\. 2025|Bondarenko et al\. 2023", "the paper's section; citations"),
    ("gpt-2/README.md", r"\[v′; 0\]|S\(x\) = 2 sigmoid|γ, 0, 1\)|an extra 1 in the denominator|k′ = v′ = 0",
     "the variants' formulas (gpt-2/model.py)"),
    ("gpt-2/README.md", r"position 0 has nothing|exit code 3",
     "the first position's index; train.py's exit code for a NaN loss"),
]


def flat(text: str) -> str:
    """A page's text with its whitespace collapsed; an indented code block's lines are marked as code spans."""
    lines, after_blank, in_code = [], True, False
    for line in text.splitlines():
        # a code block starts after a blank line and goes on while lines stay indented (a continued command's
        # "--flag" line is code, not a list item's continuation)
        in_code = line.startswith("    ") and (in_code or (after_blank and not line.lstrip().startswith(("-", "|"))))
        if in_code:
            line = "`" + line.strip().replace("`", "") + "`"
        else:
            after_blank = not line.strip()
        lines.append(line)
    return " ".join(" ".join(lines).split())


def spans(text: str, pattern: str) -> list[tuple[int, int]]:
    """Where a regex matches the text, as (start, end) pairs."""
    return [m.span() for m in re.finditer(pattern, text, re.DOTALL)]


def code(text: str) -> list[tuple[int, int]]:
    """The fenced code blocks and code spans of flat text."""
    fenced = spans(text, r"```.*?```")
    blanked = re.sub(r"```.*?```", lambda m: " " * len(m.group()), text, flags=re.DOTALL)
    return fenced + spans(blanked, r"`[^`]*`")


def uncovered(text: str, page: str, static=STATIC, covered=()) -> list[str]:
    """Each number of a page's text (a template, or a page quoting its own claims) outside code, fields, the static
    entries for the page and the given covered snippets, with the text around it."""
    text = flat(text)
    inside = code(text) + spans(text, FIELD.pattern)
    inside += [span for snippet in covered for span in spans(text, re.escape(" ".join(snippet.split())))]
    inside += [span for file, pattern, _ in static if file in (page, EVERY) for span in spans(text, pattern)]
    return [f"{m.group()!r} in ...{text[max(0, m.start() - 60):m.end() + 30]}..." for m in NUMBER.finditer(text)
            if not any(a <= m.start() and m.end() <= b for a, b in inside)]


def alternatives(pattern: str) -> list[str]:
    """A regex's top-level alternatives ("a|b(?:c|d)" -> ["a", "b(?:c|d)"])."""
    parts, depth, start, escaped = [], 0, 0, False
    for i, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    return parts + [pattern[start:]]


def stale(texts: dict, static=STATIC) -> list[tuple[str, str]]:
    """The static entries, alternative by alternative, that match none of their pages' texts (page: text), to be
    removed."""
    flats = {page: flat(text) for page, text in texts.items()}
    return [(file, alternative) for file, pattern, _ in static for alternative in alternatives(pattern)
            if not any(re.search(alternative, flats[f], re.DOTALL) for f in (texts if file == EVERY else [file]))]
