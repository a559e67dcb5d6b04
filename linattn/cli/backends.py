"""``linattn backends``: the registry as a table — what each backend can do here."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("backends", help="list the registered backends and what each supports")
    p.set_defaults(func=run)


def run(args) -> int:
    from .._registry import list_backends

    rows = []
    for b in list_backends():
        why = b.available()
        rows.append((
            b.name,
            "yes" if why is None else f"no ({why})",
            ",".join(sorted(b.devices)),
            ",".join(sorted(str(d).replace("torch.", "") for d in b.dtypes)),
            ",".join(k for k in ("none", "dense", "causal", "decay", "dense+causal", "dense+decay") if k in b.mask_kinds),
            "yes" if b.gqa else "no",
            "yes" if b.state else "no",
            b.description,
        ))
    head = ("backend", "available", "devices", "dtypes", "masks", "GQA", "state", "what it is")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    return 0
