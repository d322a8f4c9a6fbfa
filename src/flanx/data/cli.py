"""`flanx tasks ...` and `flanx mixtures ...`: look at the task collection from the shell.

    flanx tasks list [--group G] [--card NAME] [--collection C] [--cluster K] [--cards]
    flanx tasks show NAME [-n 3] [--split train]    rendered inputs/targets with token counts
    flanx mixtures list
    flanx mixtures show NAME [--tree]               rate, share and examples per epoch per task

`--cluster` takes a paper cluster (`nli`) or a FLAN code key (`entailment`);
`--cards` prints one line per card (collection, clusters, templates, the
source in use, recorded split sizes) instead of one per task.

`tasks` reads the task cards directly (no TensorFlow, fast); `mixtures`
registers the collection in seqio. Both include the user's cards and
mixtures named by `FLANX_TASKS_PATH`. Unknown names list close matches.
"""
from __future__ import annotations

import argparse
import difflib
import sys

from flanx import paths
from flanx.data import card_files
from flanx.data import cards as cards_lib
from flanx.data import clusters as clusters_lib
from flanx.data import render, sources, user_tasks, vocab

MULTI_COMMAND = True


def _collection() -> tuple[dict, dict]:
    # The collection, then the user's cards ($FLANX_TASKS_PATH): same names need `override: true`.
    cards = card_files.load_card_files(card_files.collection_card_files() + user_tasks.user_card_files())
    specs = {spec.name: spec for card in cards.values() for spec in cards_lib.task_specs(card)}
    return cards, specs


def _unknown(kind: str, name: str, known) -> int:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" `flanx {kind}s list` shows them all."
    print(f"flanx: unknown {kind} {name!r}.{hint}", file=sys.stderr)
    return 2


def source_line(card) -> str:
    """Which data a card reads: its local files or its main source (and whether that data is here)."""
    src = card.source
    what = f"{src['type']} {src['name']}" if src.get("name") and src["type"] in ("tfds", "hf") else src["type"]
    if src["type"] == "hf" and src.get("path"):
        what = f"hf {src['path']}" + (f"/{src['name']}" if src.get("name") else "")
    if card.variant == "local":
        return f"local files ({what}, under {paths.DATA_DIR_ENV}); the card's {card.alternate.source['type']} " \
               f"source is not used"
    here = "" if sources.data_available(card) else "; data not here"
    extra = "; its `local:` files are absent" if card.alternate is not None else ""
    return f"{what}{here}{extra}"


def _card_filter(args, cards: dict) -> tuple[set | None, int]:
    """Card names passing --collection/--cluster (None: no filter), or an exit code for a bad value."""
    keep = None
    if args.collection:
        keep = {n for n, c in cards.items() if c.collection == args.collection}
        if not keep:
            known = sorted({c.collection for c in cards.values() if c.collection})
            print(f"flanx: no task cards in collection {args.collection!r}; collections: "
                  f"{', '.join(known) or 'none'} (folders under tasks/)", file=sys.stderr)
            return None, 1
    if args.cluster:
        try:
            keys = set(clusters_lib.code_keys(args.cluster))
        except clusters_lib.ClusterError as e:
            print(f"flanx: {e}", file=sys.stderr)
            return None, 2
        in_cluster = {n for n, c in cards.items() if keys & set(c.clusters)}
        keep = in_cluster if keep is None else keep & in_cluster
    return keep, 0


def _print_cards(cards: list) -> None:
    width = max(len(c.name) for c in cards)
    print(f"{'card'.ljust(width)}  {'collection':10} {'clusters':24} {'templates':>9}  splits (recorded rows)  source")
    for c in cards:
        splits = ", ".join(f"{s}={v['num_examples']}" if "num_examples" in v else s for s, v in c.splits.items())
        print(f"{c.name.ljust(width)}  {c.collection or '-':10} {','.join(c.clusters) or '-':24} "
              f"{len(c.templates):9d}  {splits}  {source_line(c)}")
    print(f"\n{len(cards)} task cards")


def tasks_list(args) -> int:
    cards, specs = _collection()
    if args.card and args.card not in cards:
        return _unknown("task card", args.card, cards)
    keep, code = _card_filter(args, cards)
    if code:
        return code
    chosen = [c for c in cards.values() if (keep is None or c.name in keep)
              and (not args.group or c.group == args.group) and (not args.card or c.name == args.card)]
    if args.cards and chosen:
        _print_cards(chosen)
        return 0
    rows = [(s, cards[s.card]) for s in specs.values() if cards[s.card] in chosen]
    if not rows:
        groups = sorted({c.group for c in cards.values()})
        print(f"no tasks match (group {args.group!r}, collection {args.collection!r}, cluster {args.cluster!r}); "
              f"groups: {', '.join(groups)}", file=sys.stderr)
        return 1
    width = max(len(s.name) for s, _ in rows)
    print(f"{'task'.ljust(width)}  {'group':9} {'submix':7} {'format':8} {'vocab':7} kind")
    for s, c in rows:
        kind = "scoring" if s.scoring else ("eval-only" if c.eval_only else "train")
        print(f"{s.name.ljust(width)}  {c.group:9} {c.submixture or '-':7} {s.fmt:8} {c.vocabulary:7} {kind}")
    print(f"\n{len(rows)} tasks from {len({c.name for _, c in rows})} task cards")
    return 0


def tasks_show(args) -> int:
    cards, specs = _collection()
    if args.name not in specs:
        return _unknown("task", args.name, specs)
    spec = specs[args.name]
    card = cards[spec.card]
    split = args.split or card.split_names[0]
    if split not in card.split_names:
        print(f"flanx: task {args.name!r} has no split {split!r}; splits: {', '.join(card.split_names)}",
              file=sys.stderr)
        return 2
    try:
        length = vocab.length_fn(card.vocabulary)
        examples = render.render_examples(card, spec, split, length)
    except paths.MissingDataError as e:
        print(f"flanx: {e}\n(source: {source_line(card)})", file=sys.stderr)
        return 1
    print(f"task {spec.name} (card {card.name}: {card.description})")
    print(f"source: {source_line(card)}")
    print(f"split {split}: {len(examples)} examples; format {spec.fmt}; templates {list(spec.template_ids)}; "
          f"vocabulary {card.vocabulary}; metrics {', '.join(card.metrics) or '-'}")
    for i, ex in enumerate(examples[:args.n]):
        # +1: seqio appends EOS to both features.
        n_in, n_tgt = length(ex["inputs_pretokenized"]) + 1, length(ex["targets_pretokenized"]) + 1
        extra = f"  idx={ex['idx']} is_correct={ex['is_correct']}" if spec.scoring else ""
        extra += f"  template {ex['_template_idx']} ({ex['_template_type']}, {ex['_task_name']})"
        print(f"\n--- example {i}: inputs {n_in} tokens, targets {n_tgt} tokens{extra}")
        print(f"[inputs]\n{ex['inputs_pretokenized']}\n[targets]\n{ex['targets_pretokenized']}")
    return 0


def mixtures_list(args) -> int:
    from flanx.data import mixtures, register_all  # noqa: PLC0415 - seqio only here
    register_all()
    for name in sorted(mixtures.MIXTURES):
        print(f"{name}  {mixtures.DESCRIPTIONS.get(name, '')}".rstrip())
    return 0


def mixtures_show(args) -> int:
    from flanx.data import mixtures, register_all  # noqa: PLC0415
    register_all()
    if args.name not in mixtures.MIXTURES:
        return _unknown("mixture", args.name, mixtures.MIXTURES)
    if args.tree:
        from flanx.data import mixture_tree  # noqa: PLC0415
        try:
            print("\n".join(mixture_tree.tree_lines(args.name)))
        except paths.MissingDataError as e:
            print(f"flanx: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        rows = mixtures.mixture_table(args.name)
    except paths.MissingDataError as e:
        print(f"flanx: {e}", file=sys.stderr)
        return 1
    print(f"mixture {args.name}: {mixtures.DESCRIPTIONS.get(args.name, '')}")
    for member, rate in mixtures.MIXTURES[args.name]:
        if member in mixtures.MIXTURES:
            print(f"  submixture {member}: weight {float(rate):.4f}")
    for note in mixtures.NOTES.get(args.name, []):
        print(f"  {note}")
    width = max(len(r["task"]) for r in rows)
    print(f"\n{'task'.ljust(width)}  {'examples':>8} {'rate':>10} {'share':>8} {'ex/epoch':>9} {'epochs':>7}  n from")
    for r in rows:
        print(f"{r['task'].ljust(width)}  {r['examples']:8d} {r['rate']:10.4f} {r['share']:8.2%} "
              f"{r['examples_per_epoch']:9.0f} {r['epochs']:7.3f}  {r['counted_from']}")
    recorded = sum(r["counted_from"] == "recorded" for r in rows)
    if recorded:
        print(f"\n{recorded} task(s) use the row count recorded in their card (`num_examples`): their data is not here")
    epoch = sum(r["examples_per_epoch"] for r in rows)
    print(f"\n{len(rows)} tasks; one mixture epoch = {epoch:,.0f} examples (the tasks' training rows, "
          f"each card counted once); rate = min(cap, n) ** (1/temperature) split over formats, "
          f"submixtures weighted and renormalized")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flanx", description="Inspect flanx tasks and mixtures.")
    top = parser.add_subparsers(dest="command", required=True)
    t = top.add_parser("tasks").add_subparsers(dest="action", required=True)
    p = t.add_parser("list", help="list registered tasks")
    p.add_argument("--group", help="only this group (held_in, held_out, target)")
    p.add_argument("--card", help="only the tasks of this task card")
    p.add_argument("--collection", help="only the cards of this collection (a folder under tasks/, e.g. flan2021)")
    p.add_argument("--cluster", help="only cards in this FLAN cluster: a paper cluster (nli) or code key (entailment)")
    p.add_argument("--cards", action="store_true", help="one line per card instead of one per task")
    p.set_defaults(fn=tasks_list)
    p = t.add_parser("show", help="render the first examples of a task")
    p.add_argument("name")
    p.add_argument("-n", type=int, default=3, help="how many examples (default 3)")
    p.add_argument("--split", help="split to render (default: the card's first split)")
    p.set_defaults(fn=tasks_show)
    m = top.add_parser("mixtures").add_subparsers(dest="action", required=True)
    m.add_parser("list", help="list registered mixtures").set_defaults(fn=mixtures_list)
    p = m.add_parser("show", help="each task's rate, share and examples per epoch")
    p.add_argument("name")
    p.add_argument("--tree", action="store_true",
                   help="as a tree: submixture -> task -> format, with rates and shares (flanx.data.mixture_tree)")
    p.set_defaults(fn=mixtures_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return int(args.fn(args))
