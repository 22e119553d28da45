"""Which part of the repository may import which, read from the sources with ast (nothing is imported to check):
monkey_patch/ imports nothing of lib/; lib/ imports nothing of gpt-2/ but model.py, loaded from its file in one
place; gpt-2/ uses lib/ as the installed package it is (no sys.path edits); lib/ has no import cycle."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPT2_MODULES = {p.stem for p in (ROOT / "gpt-2").glob("*.py")}


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> list[str]:
    """Every module an import in the file names, at any depth of its code; `from a import b` names a and a.b
    (b may be a submodule)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def attribute_uses(path: Path, owner: str, attribute: str) -> list[int]:
    """Lines where `owner.attribute` appears (sys.path, importlib.util, ...)."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
            and node.attr == attribute and isinstance(node.value, ast.Name) and node.value.id == owner]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_monkey_patch_imports_nothing_from_lib():
    """lib/ (analysis) builds on monkey_patch/ (capture), never the reverse."""
    for path in sources("monkey_patch"):
        bad = [n for n in imports(path) if n == "lib" or n.startswith("lib.")]
        assert not bad, f"{path.name} imports {bad}"


def test_lib_reaches_gpt2_only_through_one_loader_of_model_py():
    loaders = []
    for path in sources("lib"):
        bad = [n for n in imports(path) if n.split(".")[0] in GPT2_MODULES]
        assert not bad, f"{path.name} imports gpt-2/ modules {bad}"
        assert not attribute_uses(path, "sys", "path"), f"{path.name} edits sys.path"
        text = path.read_text()
        loaders += [(path.name, line) for line in text.splitlines() if "spec_from_file_location" in line]
        assert "__import__" not in text and "import_module" not in text and "runpy" not in text, path.name
    assert len(loaders) == 1 and loaders[0][0] == "gpt2_checkpoints.py", loaders
    assert 'GPT2_DIR / "model.py"' in loaders[0][1]
    model_imports = imports(ROOT / "gpt-2" / "model.py")  # what lib/ loads depends on torch alone
    assert {n.split(".")[0] for n in model_imports} <= {"functools", "math", "dataclasses", "typing", "torch"}, model_imports


def test_gpt2_edits_no_sys_path():
    for path in sources("gpt-2"):
        assert not attribute_uses(path, "sys", "path"), f"{path.relative_to(ROOT)} edits sys.path"


def test_lib_has_no_import_cycle():
    modules = {module_name(p): p for p in sources("lib")}
    edges = {name: sorted({n for n in imports(path) if n in modules and n != name}) for name, path in modules.items()}

    def visit(name, stack):
        for target in edges[name]:
            assert target not in stack, "import cycle: " + " -> ".join(stack[stack.index(target):] + [target])
            visit(target, stack + [target])
    for name in modules:
        visit(name, [name])


def test_a_gpt2_data_script_runs_from_anywhere_with_lib_installed(tmp_path):
    """What the editable install gives a user: lib/ importable, the scripts found by their path."""
    script = ROOT / "gpt-2" / "data" / "backcopy" / "prepare.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), f"--out_dir={tmp_path}", "--vocab=8", "--seq_len=9",
                           "--train_seqs=20", "--val_seqs=4", "--offsets=[1]", "--triggers=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.pkl", "train.bin", "val.bin"]
