"""`flanx mixtures show NAME --tree`: a mixture as a tree, with rates and shares of examples.

For a Flan 2022 collection mixture (`kind: flan_collection`,
`flanx.data.flan2022_mixture`): submixture (FLAN's weight, the weight here,
cap, format shares, inversion rate) -> card (training rows n, `data` when
counted here or `recorded` from the card, rate `min(cap, n)`, share) ->
format (the task serving it, its share). A submixture without cards here is
listed with what it needs. Other mixtures print their nesting: mixture ->
member -> task with rate and share. Needs no data: counts fall back to the
cards' recorded ones.
"""
from __future__ import annotations

from flanx.data import flan2022_mixture, mixtures

INDENT = "  "


def tree_lines(name: str) -> list[str]:
    if name in flan2022_mixture.PLANS:
        return collection_tree(flan2022_mixture.PLANS[name])
    return nested_tree(name)


def _pct(x: float) -> str:
    return f"{100 * x:.3f}%"


def entry_shares(sub: flan2022_mixture.SubmixturePlan) -> list[tuple[flan2022_mixture.Entry, float]]:
    """(entry, share of the whole mixture's examples) for every entry of a submixture, as seqio computes it."""
    out = []
    for fmt, fmt_share in sub.shares().items():
        groups = sub.group_weights(fmt)
        for inverted, group_share in groups.items():
            members = [e for e in sub.entries[fmt] if e.inverted == inverted]
            rates = [_rate(sub, e) for e in members]
            total = sum(rates)
            out += [(e, sub.weight * fmt_share * group_share * r / total if total else 0.0)
                    for e, r in zip(members, rates)]
    return out


def _rate(sub, entry) -> float:
    return mixtures.ExamplesRate(sub.config.cap).value(mixtures.num_train_examples(entry.task))


def _submixture_line(sub) -> str:
    cfg = sub.config
    shares = " ".join(f"{f} {s:.2f}" for f, s in cfg.format_shares().items())
    cap = f"{cfg.cap:,}" if cfg.cap else "none"
    inversion = f"  inversion {cfg.inversion:g} (inverted cards {cfg.inversion / (1 + cfg.inversion):.1%})" \
        if cfg.inversion is not None else ""
    here = sub.shares()
    configured = cfg.format_shares()
    if here and any(abs(here.get(f, 0.0) - v) > 1e-9 for f, v in configured.items()):  # formats without tasks here
        shares += " (here " + " ".join(f"{f} {s:.2f}" for f, s in here.items()) + ")"
    return (f"{cfg.name}  weight {cfg.weight:g} (here {sub.weight:.4f})  cap {cap}  formats {shares}{inversion}  "
            f"{len(sub.cards)} cards")


def _absent_line(sub) -> str:
    if sub.config.name == "niv2":
        from flanx.data.flan2022 import niv2  # noqa: PLC0415
        counts = niv2.recorded_counts()
        mmlu = len(niv2.MMLU_OVERLAP_TASK_IDS)
        return (f"{INDENT}no task cards here: NIv2 needs a natural-instructions checkout or TFDS "
                f"{niv2.TFDS_NAME}; FLAN recorded {len(counts):,} tasks ({sum(counts.values()):,} rows, "
                f"tasks/flan2022/{niv2.COUNTS_FILE}), {mmlu} of them MMLU tasks it leaves out")
    return f"{INDENT}no task cards here (docs/tasks.md says where its data goes)"


def collection_tree(plan: flan2022_mixture.Plan) -> list[str]:
    cfg = plan.config
    lines = [f"{cfg.name}: {cfg.description}",
             "n = training rows: 'data' counted here, 'recorded' from the card; rate = min(cap, n) per task and "
             "format; share = of all examples drawn", ""]
    for sub in plan.submixtures:
        lines.append(_submixture_line(sub))
        if not sub.entries:
            lines += [_absent_line(sub), ""]
            continue
        if sub.left_out:
            lines.append(f"{INDENT}left out ({sub.config.prefer_source} is here): {', '.join(sub.left_out)}")
        by_card: dict[str, list] = {}
        for entry, share in entry_shares(sub):
            by_card.setdefault(entry.card.name, []).append((entry, share))
        width = max(len(t.task) for rows in by_card.values() for t, _ in rows)
        for card_name, rows in sorted(by_card.items(), key=lambda kv: -sum(s for _, s in kv[1])):
            n, counted = mixtures.train_examples(rows[0][0].task)
            kind = "  inverted" if rows[0][0].inverted and sub.config.inversion is not None else ""
            lines.append(f"{INDENT}{card_name}  n {n:,} {counted}  rate {_rate(sub, rows[0][0]):,.0f}  "
                         f"share {_pct(sum(s for _, s in rows))}{kind}")
            for entry, share in rows:
                lines.append(f"{INDENT * 2}{entry.fmt:8} {entry.task.ljust(width)}  share {_pct(share)}")
        lines.append("")
    lines += [f"note: {n}" for n in plan.notes]
    return lines


def nested_tree(name: str, weight: float = 1.0, depth: int = 0) -> list[str]:
    """Any registered mixture: its members (sub-mixtures recursively, then tasks) with rates and shares."""
    members = mixtures.get_mixture(name)
    values = [(m, float(r) if not isinstance(r, mixtures.ExamplesRate) else r.value(mixtures.num_train_examples(m)))
              for m, r in members]
    total = sum(v for _, v in values)
    lines = [f"{name}  share {_pct(weight)}"] if depth == 0 else []
    for member, value in values:
        share = weight * value / total if total else 0.0
        pad = INDENT * (depth + 1)
        if member in mixtures.MIXTURES:
            lines.append(f"{pad}{member}  rate {value:g}  share {_pct(share)}")
            lines += nested_tree(member, share, depth + 1)
        else:
            n, counted = mixtures.train_examples(member)
            lines.append(f"{pad}{member}  n {n:,} {counted}  rate {value:,.2f}  share {_pct(share)}")
    return lines
