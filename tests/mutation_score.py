"""Print the mutation score of the last `mutmut run`, per module and overall (`make mutation`).

score = detected / (detected + undetected), where detected = killed, timeout, segfault or
caught by a type check, and undetected = survived, no tests (no test calls the function) or
suspicious. Exit status 1 when the overall score is under MIN_SCORE (issue 10's acceptance
bar) or when some mutant was never checked (an interrupted run), else 0. Run from the
repository root after `mutmut run`.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

MIN_SCORE = 0.90
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
UNDETECTED = {"survived", "no tests", "suspicious"}
LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+?)\s*$")
MODULE = re.compile(r"^(?P<module>.+?)\.x[_ǁ]")  # mutmut names: module.x_func__mutmut_N, module.xǁClassǁ...


def _detected(c: Counter) -> int:
    return sum(c[s] for s in DETECTED)


def _undetected(c: Counter) -> int:
    return sum(c[s] for s in UNDETECTED)


def _score(c: Counter) -> float:
    return _detected(c) / max(1, _detected(c) + _undetected(c))


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         capture_output=True, text=True, check=True).stdout
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in out.splitlines():
        if (m := LINE.match(line)) and (module := MODULE.match(m["name"])):
            counts[module["module"]][m["status"]] += 1
    if not counts:
        print("no mutants found: run `mutmut run` first", file=sys.stderr)
        return 1
    total: Counter = sum(counts.values(), Counter())
    print(f"{'module':<22}{'killed':>8}{'survived':>10}{'score':>8}")
    for module, c in [*sorted(counts.items()), ("overall", total)]:
        print(f"{module:<22}{_detected(c):>8}{_undetected(c):>10}{100 * _score(c):>7.1f}%")
    if other := {s: n for s, n in total.items() if s not in DETECTED | UNDETECTED | {"skipped"}}:
        print(f"unfinished run: {other}; rerun `mutmut run`", file=sys.stderr)
        return 1
    return 0 if _score(total) >= MIN_SCORE else 1


if __name__ == "__main__":
    sys.exit(main())
