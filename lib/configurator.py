"""Settings of the gpt-2/ scripts from config files and --key=value flags, nanoGPT-style but checked.

    python train.py config/train_backcopy.py --attention=sigmoid --max_iters=100

Arguments are applied left to right. A config file is plain Python whose top-level names override the
defaults; a flag --key=value overrides one setting (the value is read as a Python literal when it parses
as one, as a string otherwise). Unknown keys and values of the wrong type are UserErrors.
"""
import ast
import sys
import os

from lib.errors import UserError, user_errors_exit  # noqa: F401  (re-exported for the scripts)
from lib.gpt2_data import GPT2_DIR


def _check(cfg, key, value, source):
    if key not in cfg:
        raise UserError(f"unknown config key {key!r} (from {source}); known keys: {', '.join(sorted(cfg))}")
    old = cfg[key]
    if old is None or value is None:
        return value
    if isinstance(old, bool) != isinstance(value, bool):
        raise UserError(f"config key {key!r} must be a bool (True/False), got {value!r} (from {source})")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, type(old)):
        raise UserError(f"config key {key!r} must be {type(old).__name__}, got {value!r} (from {source})")
    return value


def resolve_config_path(path):
    """A config file as given, or relative to gpt-2/ (so `config/x.py` works from anywhere)."""
    for candidate in (path, os.path.join(GPT2_DIR, path)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"config file not found: {path}")


def print_usage(defaults):
    """The running script's docstring and every setting with its default."""
    doc = (getattr(sys.modules["__main__"], "__doc__", None) or "").strip()
    print(doc + "\n\nsettings (a config file, or --key=value to change one):" if doc else "settings:")
    for key, value in defaults.items():
        print(f"  --{key}={value!r}")


def configure(defaults, argv):
    """Return a copy of `defaults` updated by the config files and --key=value flags in argv; -h or --help prints
    the usage and exits."""
    if "-h" in argv or "--help" in argv:
        print_usage(defaults)
        sys.exit(0)
    cfg = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise UserError(f"flags take the form --key=value, got {arg!r}")
            key, text = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if isinstance(cfg.get(key), str) and not isinstance(value, str):
                value = text  # e.g. --wandb_run_name=123 stays a string
            cfg[key] = _check(cfg, key, value, arg)
        else:
            path = resolve_config_path(arg)
            namespace = {}
            try:
                exec(compile(open(path).read(), path, "exec"), namespace)
            except Exception as e:
                raise UserError(f"config file {path} failed to run: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                if key.startswith("_") or type(value).__name__ == "module":
                    continue
                cfg[key] = _check(cfg, key, value, path)
    return cfg


def resolve_path(path):
    """Relative output/data paths are taken relative to gpt-2/, so commands work from any directory."""
    return path if os.path.isabs(path) else os.path.join(GPT2_DIR, path)
