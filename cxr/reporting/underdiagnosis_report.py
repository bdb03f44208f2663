"""The underdiagnosis audit (cxr/evaluation/underdiagnosis.py) in words and tables: the
terminal's line and the Markdown section of eval_<split>.md and score.md."""

from __future__ import annotations

from cxr.reporting.tables import interval_text, markdown_table, number_text

FLAGGED = ("higher in this subgroup", "lower in this subgroup")
HEADER = ["Audit", "Stratum", "With a finding", "Patients", "Called", "Rate", "CI", "vs rest",
          "CI (MOVER)", "p (Holm)", "Verdict"]


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def sentence(text: str) -> str:
    """The text with its first letter capitalised (str.capitalize lowers the rest)."""
    return text[:1].upper() + text[1:]


def percent_interval(bounds: list[float | None]) -> str:
    return "n/a" if bounds[0] is None else f"[{bounds[0]:.1%}, {bounds[1]:.1%}]"


def rate_cells(audit: str, stratum: str, cell: dict, first: list[str] | None = None
               ) -> list[str]:
    return [*(first or [audit, stratum]), str(cell["n"]), str(cell["n_patients"]),
            str(cell["events"]), number_text(cell["rate"], 3), interval_text(*cell["ci"]),
            number_text(cell["difference"], 3, signed=True),
            interval_text(*cell["difference_ci"], signed=True),
            number_text(cell["p_adjusted"], 3), cell["verdict"]]


def scored(table: dict) -> list[tuple[str, str, dict]]:
    return [(audit, stratum, cell) for audit, strata in table.items()
            for stratum, cell in strata.items() if cell["rate"] is not None]


def flags(table: dict) -> list[str]:
    """'Sex Female: 21.3% (higher in this subgroup, p 0.004 after Holm)' per flagged stratum."""
    return [f"{audit} {stratum}: {percent(cell['rate'])} against {percent(cell['rest_rate'])} "
            f"in the rest ({cell['verdict']}, p {cell['p_adjusted']:.3g} after Holm)"
            for audit, stratum, cell in scored(table) if cell["verdict"] in FLAGGED]


def negative_flags(table: dict) -> list[str]:
    return [f"{label} among {audit} {stratum}: {percent(cell['rate'])} missed against "
            f"{percent(cell['rest_rate'])} ({cell['verdict']})"
            for audit, strata in table.items() for stratum, labels in strata.items()
            for label, cell in labels.items()
            if cell["rate"] is not None and cell["verdict"] in FLAGGED]


def underdiagnosis_line(table: dict, summary: dict, unit: str = "films") -> str:
    """The terminal's line: the overall rate, the family, what was flagged; `unit` what a row
    is (images, studies)."""
    if not summary or "note" in summary:
        return f"underdiagnosis audit: {summary['note']}" if summary else ""
    found = flags(table)
    return (f"underdiagnosis: {percent(summary['rate'])} {percent_interval(summary['ci'])} of "
            f"{summary['n']} {unit} with a finding called No Finding (threshold "
            f"{summary['operating_point']['threshold']:.3g}); {summary['comparisons']} "
            f"comparisons, Holm-adjusted; "
            + ("flagged: " + "; ".join(found) if found else "no stratum flagged"))


def intro(summary: dict, unit: str) -> str:
    point = summary["operating_point"]
    return (f"The underdiagnosis rate (Seyyed-Kalantari et al., Nature Medicine 2021), "
            f"{summary['definition']} (here the rows are {unit}). Operating point: No "
            f"Finding's Youden threshold {point['threshold']:.4g} ({point['source']}). Over "
            f"the split: {percent(summary['rate'])} {percent_interval(summary['ci'])} of "
            f"{summary['n']} ({summary['events']} called). Each stratum is compared with the "
            f"rest of the split; intersections pair the demographic audits "
            f"({', '.join(summary['intersections']) or 'none'}). {summary['comparisons']} "
            f"comparisons (a two-stratum audit's mirrored pair counted once); "
            f"{summary['method']} holds the chance of any false 'higher' or 'lower' verdict at "
            f"{summary['family_wise_error_rate']:.0%}. Intervals: Wilson at the patients' "
            f"effective n, and for the difference {summary['difference']}; unadjusted 95 %.")


def negatives_markdown(table: dict, summary: dict) -> list[str]:
    rows = [rate_cells(audit, stratum, cell, [audit, stratum, label])
            for audit, strata in table.items() for stratum, labels in strata.items()
            for label, cell in labels.items() if cell["rate"] is not None]
    if not rows:
        return []
    header = ["Audit", "Stratum", "Pathology", "Positives", "Patients", "Missed", *HEADER[5:]]
    found = negative_flags(table)
    return ["### False-negative rate of each finding by subgroup", "",
            f"{sentence(summary['definition'])}, by stratum of the single audits; "
            f"{summary['comparisons']} comparisons, Holm-adjusted as a family of their own.", "",
            markdown_table(header, rows, left=(0, 1, 2, 12)), "",
            ("Flagged: " + "; ".join(found) + "." if found
             else "No finding's false-negative rate differs clearly between subgroups."), ""]


def underdiagnosis_markdown(table: dict, summary: dict, negatives: dict,
                            negative_summary: dict, unit: str = "films") -> list[str]:
    """The report's "Underdiagnosis" section (nothing when the report has none)."""
    if not summary:
        return []
    if "note" in summary:
        return ["## Underdiagnosis", "", summary["note"], ""]
    rows = [rate_cells(audit, stratum, cell) for audit, stratum, cell in scored(table)]
    left_out = sum(len(strata) for strata in table.values()) - len(rows)
    found = flags(table)
    return ["## Underdiagnosis", "", intro(summary, unit), "",
            markdown_table(HEADER, rows, left=(0, 1, 10)), "",
            *([f"{left_out} strata with fewer than min_positives {unit} with a finding (here "
               "or in the rest) are n/a in the JSON."] if left_out else []), "",
            ("Flagged after Holm's adjustment: " + "; ".join(found) + "." if found
             else "No stratum's underdiagnosis rate differs clearly from the rest of the split "
                  "after Holm's adjustment."), "",
            *negatives_markdown(negatives, negative_summary)]
