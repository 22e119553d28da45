"""Re-check a results folder: re-run what each result's provenance records and compare every number.

    python reproduce.py --check results/figures/gemma3_270m

Integers (layers, tokens, channels, counts) must match exactly, floats within a relative tolerance (RTOL, or an
absolute one near zero), and sentences word for word with the numbers in them compared the same way
(lib/text_numbers.py: an integer exactly, a measured value within RTOL or one unit of its last printed digit);
times, file lists and the provenance itself are not compared. A result made by other code or other weights, or with
other special tokens prepended than the re-run prepends (the tokenizer's BOS, or none with --no-bos), is said so in
one line, and still compared. A result written when layers counted from 1 (`layers_are`: "1-based") is said so in
one line and not compared number by number: every layer in it differs by one (lib/layer_numbering.py).

Why a tolerance: the re-run's floats come out of other reduction orders (another CPU, another thread count), which
moves a value like 897.548 in its fifth digit; 1e-3 is far above that noise and far below any change a reader
would cite.
"""
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from lib.errors import UserError
from lib.layer_numbering import LAYERS_ARE, written_one_based
from lib.provenance import ROOT, git_state, model_source
from lib.text_numbers import close, texts_match

RTOL, ATOL = 1e-3, 1e-6
# not compared: times, provenance and the command (the re-run's is the recorded one with another --savedir), file
# lists, notes, the single runs of a result measured over several (a result that is unstable by nature, such as
# W8A8, gives its median run and a band "reproducible_within"), and the input convention (said in one line instead)
SKIP = {"seconds", "provenance", "command", "files", "notes", "runs", "reproducible_within", "input"}
LEGACY_INPUT = {"prepended": [], "text": "no special tokens (made before results recorded their input convention, "
                                         "when nothing was ever prepended)"}


def input_record(result: dict) -> dict:
    """What a result JSON says was prepended to its inputs: a figure's `input`, or a consequences run's first
    model's `data.input`; results made before the record existed prepended nothing."""
    if isinstance(result.get("input"), dict):
        return result["input"]
    runs = result.get("results") or [{}]
    return (runs[0].get("data") or {}).get("input") or LEGACY_INPUT


def input_note(folder, old: dict, new: dict) -> str | None:
    """One line where the folder's results and the re-run's prepend different special tokens."""
    before, after = input_record(old), input_record(new)
    if before.get("prepended", []) == after.get("prepended", []):
        return None
    return (f"note: {folder} was made with {before.get('text')}; the re-run of its command has {after.get('text')}: "
            "the numbers compare two different inputs")


def numbering_note(folder, results: dict) -> str | None:
    """One line where the folder's results count layers from 1, as results did before every layer was 0-based."""
    old = sorted(name for name, result in results.items() if written_one_based(result))
    if not old:
        return None
    return (f"{folder} was written with 1-based layers ({', '.join(old)}: layers_are \"1-based\"); layers are "
            f"{LAYERS_ARE} now, so its layer numbers differ by one: regenerate it with its command "
            "(provenance.command) instead of comparing")


def differences(old, new, path="", rtol=RTOL, atol=ATOL) -> list[str]:
    """Every place where two JSON values differ, as 'path: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        band = old.get("reproducible_within")
        if isinstance(band, dict):  # the result states how far a re-run of it may land: the wider tolerance wins
            rtol, atol = max(rtol, band.get("rtol", 0)), max(atol, band.get("atol", 0))
        out = []
        for key in sorted(set(old) | set(new)):
            if key in SKIP:
                continue
            if key not in old or key not in new:
                out.append(f"{path}/{key}: {'missing' if key not in old else 'present'} -> "
                           f"{'missing' if key not in new else 'present'}")
                continue
            out += differences(old[key], new[key], f"{path}/{key}", rtol, atol)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]", rtol, atol)]
    if isinstance(old, str) and isinstance(new, str):
        return [] if texts_match(old, new, rtol, atol) else [f"{path}: {old!r} -> {new!r}"]
    if isinstance(old, bool) or isinstance(new, bool) or not isinstance(old, (int, float)) \
            or not isinstance(new, (int, float)):
        return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
    if isinstance(old, int) and isinstance(new, int):
        return [] if old == new else [f"{path}: {old} -> {new}"]
    return [] if close(old, new, rtol, atol) else [f"{path}: {old:.6g} -> {new:.6g}"]


def _rerun_command(command: str, savedir: str) -> list[str]:
    """The recorded command with its --savedir pointed at `savedir`."""
    args = shlex.split(command)
    if len(args) < 2 or not args[1].endswith(".py"):
        raise UserError(f"cannot re-run {command!r}: not a 'python <script>.py ...' command")
    if "--savedir" in args:
        args[args.index("--savedir") + 1] = savedir
    else:
        args += ["--savedir", savedir]
    return [sys.executable, *args[1:]]


def result_files(folder: Path) -> dict:
    """{file name: result} of every JSON with a provenance block in `folder`; a UserError where there is none."""
    results = {p.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    results = {name: r for name, r in results.items() if isinstance(r, dict) and "provenance" in r}
    if not results:
        raise UserError(f"no result files with a provenance block in {folder}: nothing to re-check")
    return results


def check_folder(folder, log=print) -> list[str]:
    """Re-run and compare every result JSON with a provenance block in `folder`; returns the differences."""
    folder = Path(folder)
    results = result_files(folder)
    commands = {r["provenance"]["command"] for r in results.values()}
    if len(commands) > 1:
        raise UserError(f"{folder} holds results of {len(commands)} different commands; re-check them one folder each")
    block = next(iter(results.values()))["provenance"]
    now = git_state()
    if block["project"].get("commit") != now.get("commit"):
        log(f"note: {folder} was made at commit {str(block['project'].get('commit'))[:10]}, this is "
            f"{str(now.get('commit'))[:10]}: comparing anyway")
    recorded = (block.get("model") or {})
    if recorded.get("weights_sha256") and Path(recorded["source"]).exists():
        from types import SimpleNamespace
        current = model_source(SimpleNamespace(name=recorded["name"], source=recorded["source"],
                                               title=recorded.get("title", ""))).get("weights_sha256")
        if current != recorded["weights_sha256"]:
            log(f"note: the weights at {recorded['source']} are not the ones {folder} was made from "
                f"(sha256 {recorded['weights_sha256'][:12]} then, {str(current)[:12]} now): comparing anyway")
    with tempfile.TemporaryDirectory() as tmp:
        command = _rerun_command(block["command"], tmp)
        log("re-running: " + " ".join(shlex.quote(a) for a in command[1:]))
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"the re-run failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        fresh = {p.name: p for p in Path(tmp).rglob("*.json")}
        found, noted = [], False
        for name, old in results.items():
            if name not in fresh:
                found.append(f"{name}: not made by the re-run")
                continue
            new = json.loads(fresh[name].read_text())
            note = input_note(folder, old, new)
            if note and not noted:
                log(note)
                noted = True
            found += [f"{name}{d}" for d in differences(old, new)]
    return found


def main(folder, log=print) -> int:
    note = numbering_note(folder, result_files(folder))
    if note:  # every layer differs by one: a list of those differences would hide any other
        log(note)
        return 1
    found = check_folder(folder, log)
    for line in found:
        log(line)
    log(f"{folder}: {'the same within tolerance' if not found else f'{len(found)} difference(s)'} "
        f"(relative tolerance {RTOL:g} for floats and the measured values in sentences; integers and words exact)")
    return 1 if found else 0
