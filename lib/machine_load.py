"""How busy the machine was while a benchmark ran, for its provenance: a timing taken while other processes use
the CPUs measures them as much as the code.

`MachineLoad()` is made when a benchmark starts and `.read()` when it ends: the load average at both ends, and
the share of the machine's CPU time over that interval (all cores, from /proc/stat) that processes other than
this one and its waited-for children used. `refuse_loaded_overwrite` is the benches' guard: a result file that
git tracks is not overwritten from a loaded machine (or one whose load cannot be measured) unless the user
passes --allow-loaded.
"""
import os
import subprocess
import time
from pathlib import Path

from lib.errors import UserError

LOADED_SHARE = 0.1  # other processes' share of all CPUs above which the machine counts as loaded
PROBE_SECONDS = 0.5  # the short measurement before a benchmark that would overwrite a committed result
STAT = "/proc/stat"


def cpu_ticks(path=STAT):
    """(busy, total) clock ticks of all CPUs since boot from /proc/stat's first line (busy: all but idle and
    iowait), and the number of CPUs it lists; None where the file cannot be read (not Linux)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        fields = [int(x) for x in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return sum(fields) - fields[3] - fields[4], sum(fields), cpus


def own_cpu_seconds():
    """CPU seconds of this process and of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class MachineLoad:
    """The machine's load from construction to `read()`."""

    def __init__(self):
        self.start = (time.monotonic(), cpu_ticks(), own_cpu_seconds(), load_average())

    def read(self) -> dict:
        """{seconds, cpus, load_average_start, load_average_end, own_cpu_s, others_cpu_share, loaded}: the
        others' share is (busy CPU time - this process tree's) / all CPUs' time; None (and loaded None) where
        /proc/stat cannot be read."""
        wall0, ticks0, own0, load0 = self.start
        ticks, own = cpu_ticks(), own_cpu_seconds()
        out = dict(seconds=round(time.monotonic() - wall0, 3), cpus=os.cpu_count(), load_average_start=load0,
                   load_average_end=load_average(), own_cpu_s=round(own - own0, 3), others_cpu_share=None,
                   loaded=None, loaded_above=LOADED_SHARE)
        if ticks0 is None or ticks is None or ticks[1] <= ticks0[1]:
            return out
        per_second = os.sysconf("SC_CLK_TCK")
        busy, total = (ticks[0] - ticks0[0]) / per_second, (ticks[1] - ticks0[1]) / per_second
        share = min(1.0, max(0.0, busy - (own - own0)) / total)
        out.update(cpus=ticks[2], others_cpu_share=round(share, 4), loaded=share > LOADED_SHARE)
        return out


def tracked_by_git(path) -> bool:
    """Whether git tracks the file at `path` (a committed result)."""
    path = Path(path).resolve()
    try:
        done = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def refuse_loaded_overwrite(path, load: dict, allow_loaded: bool) -> None:
    """UserError (one line) when `path` is a committed result and `load` (MachineLoad.read()) was not idle."""
    if allow_loaded or load["loaded"] is False or not tracked_by_git(path):
        return
    if load["loaded"] is None:
        why = "the load of this machine cannot be measured (no /proc/stat)"
    else:
        why = (f"other processes used {load['others_cpu_share']:.0%} of the {load['cpus']} CPUs (load average "
               f"{load['load_average_end']})")
    raise UserError(f"not overwriting the committed result {path}: {why}; rerun on an idle machine, or pass "
                    "--allow-loaded to overwrite it anyway")


def check_before(path, allow_loaded: bool) -> MachineLoad:
    """At a benchmark's start: refuse at once when it would overwrite a committed result and the machine is
    already loaded (a PROBE_SECONDS sample), else start measuring its load."""
    if not allow_loaded and tracked_by_git(path):
        probe = MachineLoad()
        time.sleep(PROBE_SECONDS)
        refuse_loaded_overwrite(path, probe.read(), allow_loaded)
    return MachineLoad()


def check_after(path, load: MachineLoad, allow_loaded: bool) -> dict:
    """At a benchmark's end, before it writes `path`: the load over its run (for its provenance), after
    refusing a loaded overwrite of a committed result."""
    record = load.read()
    refuse_loaded_overwrite(path, record, allow_loaded)
    return record


ALLOW_LOADED_HELP = ("overwrite a committed result even when other processes used more than "  # argparse help: %%
                     f"{100 * LOADED_SHARE:.0f}%% of the CPUs during the run (the load is recorded in the provenance)")
