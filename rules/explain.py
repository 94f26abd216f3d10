"""Human-readable explanation of a Decision: every rule considered, every condition tested."""

from __future__ import annotations

from rules.evaluate import Decision


def explain(decision: Decision) -> str:
    """The trace as indented text, then the outcome (``postdesk rules explain``)."""
    lines = [f"rule set {decision.version}"]
    for rule in decision.trace:
        mark = "MATCH" if rule.matched else "no   "
        note = f"  [{rule.note}]" if rule.note else ""
        lines.append(f"{mark} {rule.type:<19} {rule.rule}{note}")
        for cond in rule.conditions:
            actual = cond.actual if not isinstance(cond.actual, str) or len(cond.actual) < 70 \
                else cond.actual[:67] + "..."
            lines.append(f"        {'true ' if cond.result else 'false'} {cond.key} "
                         f"{cond.op} {cond.expected}  (actual: {actual!r})")
    lines.append("")
    lines += _outcome(decision)
    return "\n".join(lines)


def _outcome(decision: Decision) -> list[str]:
    if decision.reject:
        return [f"REJECT 550 5.7.1 {decision.reject}"]
    out = [f"classification: {decision.classification or '(none)'}",
           f"state:          {decision.state}"]
    for action in decision.actions:
        details = ", ".join(f"{k}={v}" for k, v in action.items() if k not in ("type", "rule"))
        out.append(f"action:         {action['type']} ({action['rule']}) {details}".rstrip())
    if decision.route:
        out.append(f"route:          {decision.route}")
    if decision.documents:
        out.append(f"documents:      {', '.join(decision.documents)}")
    if decision.stopped_by:
        out.append(f"stopped by:     {decision.stopped_by}")
    return out
