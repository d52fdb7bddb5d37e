"""What ``robustlab eval`` prints: the robust accuracy per eps and attack with intervals, the cost in passes, the
headline, the attacks the adaptive step added, samples with NaN/inf logits, the sanity flags and indicators, the
curve and the report's files -- rendered here (the CLI prints it; report.md says what each part means)."""

from __future__ import annotations

from robustlab.eval.intervals import format_interval
from robustlab.eval.report import EvalReport
from robustlab.io import markdown_table


def summary_text(report: EvalReport) -> str:
    """The terminal summary of an evaluation ``report`` (what ``robustlab eval`` prints)."""
    names, lines = report.attack_names, []
    lines.append(
        f"{report.model} on {report.dataset}/{report.split} (n={report.n}), {report.norm}, attacks: {', '.join(names)}"
    )
    rows = [
        [f"{e.eps:.4g}", format_interval(e.clean_accuracy, e.intervals.get("clean_accuracy"))]
        + [format_interval(e.attacks[a].robust_accuracy_after, e.attacks[a].robust_accuracy_after_ci) for a in names]
        + [
            format_interval(e.robust_accuracy, e.intervals.get("robust_accuracy")),
            f"{e.worst_case_topk.icr['mean']:.2f}",
        ]
        for e in report.results
    ]
    lines.append(markdown_table(["eps", "clean %", *[f"after {a} %" for a in names], "robust %", "ICR mean"], rows))
    # the protocol in one line here; report.md says what it means, once
    lines.append(f"95 % Clopper-Pearson intervals, n = {report.n}; eps protocol: {report.protocol} (see report.md)")
    if report.cost:  # the cost of the answer: images forward / input gradients backward, all ranks
        passes = [[f"{e.eps:.4g}", a, f"{e.attacks[a].seconds:.2f}", e.attacks[a].forward_passes,
                   e.attacks[a].backward_passes] for e in report.results for a in names]  # fmt: skip
        lines.append(markdown_table(["eps", "attack", "seconds", "forward passes", "backward passes"], passes))
        parts = ", ".join(f"{k} {v['forward_passes']}/{v['backward_passes']}" for k, v in report.cost.items()
                          if isinstance(v, dict))  # fmt: skip
        lines.append(f"cost: {report.cost['forward_passes']} forward, {report.cost['backward_passes']} backward "
                     f"passes (forward/backward: {parts})")  # fmt: skip
    lines.append(f"headline: {report.headline_text()}")
    for added, why in report.adaptive.get("added", {}).items():
        lines.append(f"added {added}: {why}")
    for e in report.results:
        if e.nonfinite:
            shown = ", ".join(map(str, e.nonfinite[:10])) + (", ..." if len(e.nonfinite) > 10 else "")
            lines.append(f"NaN/inf logits at eps {e.eps:.4g}: {len(e.nonfinite)} sample(s) counted neither correct "
                         f"nor robust (indices {shown})")  # fmt: skip
    for flag in report.sanity or []:
        lines.append(f"{'FLAG' if flag.fired else 'ok  '} {flag.name}: {flag.message}")
    for ind in report.indicators or []:  # indicators of attack failure, beside the flags
        state = {True: "FIRED", False: "ok  ", None: "n/a "}[ind["fired"]]
        lines.append(f"{state} indicator {ind['name']}: {ind['message']}")
    if report.curve:
        median = report.curve["median_norm"]
        lines.append(f"curve: {len(report.curve['eps'])} eps from one {report.curve['attack']['attack']} run, median "
                     f"minimal norm {'not reached' if median is None else f'{median:.4g}'}; {report.curve['note']} "
                     "(report.md)")  # fmt: skip
    plots = f", plots in {report.files['robust_vs_eps'].rsplit('/', 1)[0]}" if "robust_vs_eps" in report.files else ""
    lines.append(f"report: {report.files['json']}, {report.files['markdown']}{plots}")
    return "\n".join(lines)


__all__ = ["summary_text"]
