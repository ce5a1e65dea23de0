"""What a run did to its model, in words: "promoted" or "kept the champion", with both numbers.

The one wording of a :class:`~shared.contracts.models.ModelSection` (the completion message's
``model`` section) for people: the Teams card, ``rlq status`` and the dashboard say it the same way.
An evaluation reads ``mean ± std`` (the population standard deviation of the episode returns) with
two decimals; a missing one reads ``no evaluation``.
"""

from __future__ import annotations

import math

from shared.contracts.models import Evaluation, ModelSection

__all__ = ["evaluation_text", "verdict", "verdict_headline"]


def _number(value: float) -> str:
    return f"{value:,.2f}" if math.isfinite(value) else str(value)


def evaluation_text(evaluation: Evaluation | None) -> str:
    """``187.30 ± 12.10`` (mean ± spread), or ``no evaluation``."""
    if evaluation is None:
        return "no evaluation"
    return f"{_number(evaluation.mean)} ± {_number(evaluation.std)}"


def verdict_headline(section: ModelSection) -> str:
    """The short form: ``promoted v4 of pong`` / ``kept the champion v3 of pong`` /
    ``registered v1 of pong, not promoted``."""
    if section.promoted:
        return f"promoted v{section.version} of {section.name}"
    if section.champion_version is not None:
        return f"kept the champion v{section.champion_version} of {section.name}"
    return f"registered v{section.version} of {section.name}, not promoted"


def verdict(section: ModelSection) -> str:
    """One sentence with both numbers: the candidate's and the champion's it was played against."""
    head = verdict_headline(section)
    candidate = evaluation_text(section.candidate)
    played = section.candidate or section.champion
    over = f" over {played.episodes} episodes" if played is not None else ""
    against = section.champion_version_before
    if section.champion is None or against is None:
        if section.promoted and against is None:
            return f"{head}: its first champion, {candidate}{over}"
        return f"{head}: v{section.version} scored {candidate}{over} ({section.reason})"
    champion = evaluation_text(section.champion)
    if section.promoted:
        return f"{head}: {candidate} against the champion v{against}'s {champion}{over}"
    return f"{head}: v{section.version} scored {candidate} against v{against}'s {champion}{over}"
