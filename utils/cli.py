"""The entry scripts' argparse parser: no silent abbreviations, and "did you mean ..." for a mistyped flag or choice.

    parser = ArgumentParser(description="...")   # what every entry script builds instead of argparse's
    parser.parse_args(["--epoch", "2"])  # prog: error: unrecognized arguments: --epoch 2; did you mean --epochs?

argparse would take `--epoch 2` as `--epochs 2` (allow_abbrev): a typo of one flag can silently set another.
"""
from __future__ import annotations

import argparse
import difflib
import math
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from utils.fileio import EXIT_BAD_INPUT, print_error


def did_you_mean(word: str, options: Iterable[str], count: int = 3, cutoff: float = 0.6) -> str:
    """'; did you mean X or Y?' for the `options` closest to `word` ('' if none is close), case ignored.

    Close: difflib's similarity ratio at least `cutoff`, and within 0.1 of the best match, so a clear winner
    comes alone.

    >>> did_you_mean("--epoch", ["--epochs", "--lr"])
    '; did you mean --epochs?'
    """
    by_lower = {str(o).lower(): str(o) for o in options}
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(str(word).lower())
    scored = []
    for option in by_lower:
        matcher.set_seq1(option)
        if (matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff
                and (score := matcher.ratio()) >= cutoff):
            scored.append((score, option))
    scored.sort(key=lambda so: -so[0])
    near = [by_lower[option] for score, option in scored[:count] if score >= scored[0][0] - 0.1]
    return f"; did you mean {' or '.join(near)}?" if near else ""


def flag_hint(typed: str, flags: list[str]) -> str:
    """`did_you_mean` for a flag: the flags it abbreviates (what argparse's allow_abbrev would have taken) when
    there are any (at most 3), else the close ones."""
    longer = [f for f in flags if f.startswith(typed)]
    return f"; did you mean {' or '.join(longer[:3])}?" if longer else did_you_mean(typed, flags)


def shell_command(*words) -> str:
    """A command printed as a hint, ready to paste: each word quoted where the shell needs it, so a path with a
    space stays one argument (`shell_command("python", "evaluate.py", "--all", "my runs")` ->
    "python evaluate.py --all 'my runs'"). Every printed command goes through it."""
    return shlex.join(str(word) for word in words)


def any_case(choices: Iterable[str]):
    """argparse `type=` for string choices given in any case: the canonical choice (`--variant c` -> "C")."""
    canonical = {c.lower(): c for c in choices}

    def convert(value: str) -> str:
        return canonical.get(value.lower(), value)  # not a choice: argparse's check reports it (with a hint)
    return convert


@dataclass(frozen=True)
class Range:
    """The values a numeric flag takes: finite numbers from `lo` to `hi` (either end left out with `lo_open` /
    `hi_open`; an infinite end is no bound). NaN and ±inf are never in a Range.

    >>> Range(0, 1, hi_open=True).refusal(1.5), Range(lo=0).refusal(0.0)
    ('must be a finite number in [0, 1), got 1.5', None)
    """
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __str__(self) -> str:
        lo, hi = (str(int(x)) if float(x).is_integer() else f"{x:g}" for x in (self.lo, self.hi))
        if math.isinf(self.hi):
            return f"{'>' if self.lo_open else '>='} {lo}" if math.isfinite(self.lo) else ""
        if math.isinf(self.lo):
            return f"{'<' if self.hi_open else '<='} {hi}"
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"

    def __contains__(self, value: float) -> bool:
        return (math.isfinite(value) and (self.lo < value if self.lo_open else self.lo <= value)
                and (value < self.hi if self.hi_open else value <= self.hi))

    def refusal(self, value: float, typed: str | None = None) -> str | None:
        """'must be a finite number >= 0, got -1' ("an integer" for an int; `typed`: the value as the user wrote
        it), or None when `value` is in range."""
        if value in self:
            return None
        kind = "an integer" if isinstance(value, int) else "a finite number"
        return f"must be {' '.join(filter(None, (kind, str(self))))}, got {value if typed is None else typed}"

    def parser(self, kind: type):
        """argparse `type=` converting with `kind` (int, float) and refusing values out of range, so the refusal is
        argparse's one line (`train.py: error: argument --lr: must be a finite number > 0, got nan`), exit 2."""
        def convert(text: str):
            value = kind(text)  # ValueError: argparse's "invalid float value: 'x'"
            refusal = self.refusal(value, text)
            if refusal:
                raise argparse.ArgumentTypeError(refusal)
            return value
        convert.__name__ = kind.__name__  # argparse names the type in its own message
        return convert


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with `allow_abbrev=False`, a close-match hint on an unknown flag or choice, and a
    rejected flag answered in one line (`prog: error: ...`, no usage block: --help shows it), once per machine
    under a launcher (utils.fileio.print_error), exit 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [opt for action in self._actions for opt in action.option_strings if opt.startswith("--")]
            first = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), "")
            self.error(f"unrecognized arguments: {' '.join(extras)}{flag_hint(first, flags) if first else ''}")
        return namespace

    def error(self, message: str):
        print_error(f"{self.prog}: error: {message}")
        sys.exit(EXIT_BAD_INPUT)

    def _check_value(self, action, value):  # argparse's hook for `choices` (the same message, plus the hint)
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {', '.join(choices)})"
                                                 f"{did_you_mean(str(value), choices)}")
