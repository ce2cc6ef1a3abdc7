"""What ``OverfittingMonitor`` says: its alert messages and summaries, worded from its history of checks.

Pure text over plain values (the monitor's ``history`` entries), no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["AlertWording"]


class AlertWording:
    """Word the monitor's findings: one alert, the one-line summary, the table of checks.

    Args:
        pairs: the monitor's ``{name: (train_key, val_key, mode)}``.
        window: checks of the trend test (named in the alert).
        criteria: the monitor's ``{criterion: {pair: threshold}}``.

    Example:
        >>> wording = AlertWording({"loss": ("train_loss", "val_loss", "min")}, 8, {"gl": {"loss": 5.0}})
        >>> wording.summary_line([])
        'OverfittingMonitor: no alert (loss).'
    """

    def __init__(
        self,
        pairs: Mapping[str, tuple[str, str, str]],
        window: int,
        criteria: Mapping[str, Mapping[str, float]],
    ) -> None:
        self.pairs = dict(pairs)
        self.window = window
        self.criteria = criteria

    @staticmethod
    def epoch_of_check(history: Sequence[Mapping[str, Any]], check: int) -> int | None:
        """Return the epoch of check number ``check`` (``None`` if it is not in ``history``).

        Example:
            >>> AlertWording.epoch_of_check([{"check": 0, "epoch": 3}], 0)
            3
        """
        for h in history:
            if h["check"] == check:
                return int(h["epoch"])
        return None

    def describe(self, name: str, r: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
        """Say which criteria of pair ``name`` fired in its report ``r``, with the numbers.

        Example:
            >>> wording = AlertWording({"loss": ("train_loss", "val_loss", "min")}, 8, {"gl": {"loss": 5.0}})
            >>> r = {"best_check": 0, "best_val": 0.5, "fired": ["gl"], "val": 0.6, "gl": 20.0, "train": 0.2,
            ...      "gap": 0.4}
            >>> print(wording.describe("loss", r, [{"check": 0, "epoch": 2}]))
            val_loss=0.6 is 20 % worse than its best 0.5 (epoch 2), while train_loss=0.2 kept improving
            (gap 0.4)
        """
        train_key, val_key, _ = self.pairs[name]
        best_epoch = self.epoch_of_check(history, r["best_check"])
        best = f"{r['best_val']:.4g}" + ("" if best_epoch is None else f" (epoch {best_epoch})")
        parts = []
        for crit in r["fired"]:
            if crit in ("trend", "gl"):
                rise = f"{val_key}={r['val']:.4g} is {r['gl']:.3g} % worse than its best {best}"
                if crit == "trend":
                    rise += f" and has risen over the last {self.window} checks (t = {r['trend']:.2g})"
                parts.append(rise)
            elif crit == "pq":
                parts.append(f"PQ = {r['pq']:.3g} (GL {r['gl']:.3g} % against little training progress)")
            elif crit == "up":
                parts.append(f"{val_key} got worse {r['up_count']} checks in a row")
            else:
                parts.append(
                    f"the train/validation gap is {r['gap']:.4g} (relative {r['rel_gap']:.3g}), above "
                    f"{self.criteria[crit][name]:g} ({crit})"
                )
        return (
            f"{'; '.join(dict.fromkeys(parts))}, while {train_key}={r['train']:.4g} kept improving "
            f"(gap {r['gap']:.4g})"
        )

    def alert(
        self,
        history: Sequence[Mapping[str, Any]],
        entry: Mapping[str, Any],
        new: Sequence[str],
        next_steps: Sequence[str],
        stopping: bool,
    ) -> str:
        """Word the alert of check ``entry`` for the pairs ``new`` whose episode starts there.

        Example:
            >>> wording = AlertWording({"loss": ("train_loss", "val_loss", "min")}, 8, {"gl": {"loss": 5.0}})
            >>> r = {"best_check": 0, "best_val": 0.5, "fired": ["gl"], "val": 0.6, "gl": 20.0, "train": 0.2,
            ...      "gap": 0.4}
            >>> entry = {"epoch": 4, "step": 40, "check": 4, "pairs": {"loss": r}}
            >>> print(wording.alert([entry], entry, ["loss"], ["add dropout."], stopping=False))
            OverfittingMonitor: overfitting at epoch 4 (step 40) in `loss`: val_loss=0.6 is 20 % worse than
            its best 0.5, while train_loss=0.2 kept improving (gap 0.4). Next steps: add dropout.
            Or train on more data, with a smaller model or for fewer epochs.
        """
        described = [f"`{n}`: {self.describe(n, entry['pairs'][n], history)}" for n in new]
        what = "Stopping training. " if stopping else ""
        return (
            f"OverfittingMonitor: overfitting at epoch {entry['epoch']} (step {entry['step']}) in "
            + "; ".join(described)
            + f". {what}Next steps: {'; '.join(next_steps)} Or train on more data, with a smaller model or"
            " for fewer epochs."
        )

    def summary_line(self, history: Sequence[Mapping[str, Any]]) -> str:
        """One line: per pair, the epochs its alert episodes started at (or that it never alerted).

        Example:
            >>> AlertWording({"loss": ("train_loss", "val_loss", "min")}, 8, {}).summary_line([])
            'OverfittingMonitor: no alert (loss).'
        """
        starts: dict[str, list[int]] = {name: [] for name in self.pairs}
        previous = {name: False for name in self.pairs}
        for h in history:
            for name, r in h["pairs"].items():
                alert = bool(r.get("alert", h["alert"]))
                if alert and not previous[name]:
                    starts[name].append(int(h["epoch"]))
                previous[name] = alert
        parts = [f"{n} from epoch {', '.join(map(str, e))}" for n, e in starts.items() if e]
        quiet = [n for n, e in starts.items() if not e]
        if not parts:
            return f"OverfittingMonitor: no alert ({', '.join(quiet)})."
        tail = f"; no alert: {', '.join(quiet)}" if quiet else ""
        return f"OverfittingMonitor: overfitting alerts in {'; '.join(parts)}{tail}."

    @staticmethod
    def summary_table(history: Sequence[Mapping[str, Any]]) -> str:
        """Return the history as a text table: per check and pair, the values and whether that pair alerted.

        Example:
            >>> AlertWording.summary_table([]).splitlines()[0]
            'OverfittingMonitor summary'
        """
        lines = [
            "OverfittingMonitor summary",
            f"{'epoch':>5} {'pair':<12} {'train':>10} {'val':>10} "
            f"{'gap':>10} {'GL %':>8} {'trend t':>8} alert fired",
        ]
        for h in history:
            for name, r in h["pairs"].items():
                trend = "" if r.get("trend") is None else f"{r['trend']:.3g}"
                alert = "yes" if r.get("alert", h["alert"]) else "no"
                fired = ",".join(r["fired"])
                if r["fired"] and r.get("held_back"):
                    fired += f" (held back: {r['held_back']})"
                lines.append(
                    f"{h['epoch']:>5} {name:<12} {r['train']:>10.4g} {r['val']:>10.4g} {r['gap']:>10.4g} "
                    f"{r['gl']:>8.3g} {trend:>8} {alert:>5} {fired}"
                )
        return "\n".join(lines)
