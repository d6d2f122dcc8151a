"""One study definition per record (docs/design.md, invariants): what a study trains, as plain
data, and whether a new definition only extends an old one. Pure functions.

A definition is the base trial config (flattened, every default filled in), the space,
the seeds and the search. A new definition *extends* an old one when every trial of the old
one is still a trial of the new one with the same meaning: the same base settings, the same
factors (ranges unchanged), and only levels, seeds or search budget added. Anything else is
a *change*, listed as (field, old, new).

``fixed_hash`` hashes the part an extension never changes (base, factor names, ranges,
search kind, objectives, pruner): the parent run and every trial run carry it as the tag
``vaebench.definition``, so a reader can keep exactly the trials of a record's definition.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from vaebench.study.config import flatten
from vaebench.study.spec import Range, Study

#: settings added after definitions were first recorded, with the default that reproduces the old
#: behaviour: left out of a definition at that default, so a record begun before the setting existed
#: still matches (resumes and extends) while a study that sets it otherwise is a change. (A trial's
#: config hash leaves out a longer list, study.config.LATER_DEFAULTS: some of those settings predate
#: definitions, which record them.)
LATER_SETTINGS: dict[str, Any] = {"train.lr_schedule": "constant"}


def definition(study: Study) -> dict[str, Any]:
    """The study's definition as JSON-able data. A study with plugins adds ``plugins``: each one's
    qualified name, distribution version and source sha256 (vaebench.study.plugin_checks), so a
    change to a plugin's code is a change of the definition; a study of built-ins has no such key
    (its definition is what it was before plugins existed)."""
    from vaebench.study.plugin_checks import identities

    search = study.search.model_dump(mode="json")
    out = {
        "base": {k: v for k, v in flatten(study.base()).items() if LATER_SETTINGS.get(k, object()) != v},
        "space": {
            k: (v.model_dump(mode="json") if isinstance(v, Range) else {"levels": list(v)})
            for k, v in study.space.items()
        },
        "seeds": list(study.seeds),
        "search": search,
    }
    plugins = identities(study)
    if plugins:
        out["plugins"] = plugins
    return out


def fixed_hash(defn: dict[str, Any]) -> str:
    fixed = {
        "base": defn["base"],
        "space": {k: (None if "levels" in v else v) for k, v in defn["space"].items()},
        "search": {k: v for k, v in defn["search"].items() if k != "budget"},
    }
    if defn.get("plugins"):
        fixed["plugins"] = defn["plugins"]
    blob = json.dumps(fixed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for everything ``new`` changes that is not an extension; [] when
    ``new`` equals or extends ``old``."""
    out: list[tuple[str, Any, Any]] = []
    ob, nb = old["base"], new["base"]
    for k in sorted(set(ob) | set(nb)):
        if _canon(ob.get(k)) != _canon(nb.get(k)):
            out.append((k, ob.get(k), nb.get(k)))
    os_, ns = old["space"], new["space"]
    for k in [*os_, *(k for k in ns if k not in os_)]:
        o, n = os_.get(k), ns.get(k)
        if o is None or n is None:
            out.append(
                (f"space.{k}", None if o is None else o.get("levels", o), None if n is None else n.get("levels", n))
            )
        elif "levels" in o and "levels" in n:
            if not {_canon(x) for x in o["levels"]} <= {_canon(x) for x in n["levels"]}:
                out.append((f"space.{k}", o["levels"], n["levels"]))  # a level removed or changed
        elif _canon(o) != _canon(n):
            out.append((f"space.{k}", o.get("levels", o), n.get("levels", n)))
    op, np_ = old.get("plugins", {}), new.get("plugins", {})
    for ref in sorted(set(op) | set(np_)):
        o, n = op.get(ref, {}), np_.get(ref, {})
        for k in sorted(set(o) | set(n)):
            if _canon(o.get(k)) != _canon(n.get(k)):
                out.append((f"plugins.{ref}.{k}", o.get(k), n.get(k)))
    if not set(old["seeds"]) <= set(new["seeds"]):
        out.append(("seeds", old["seeds"], new["seeds"]))
    osr, nsr = old["search"], new["search"]
    for k in sorted(set(osr) | set(nsr)):
        o, n = osr.get(k), nsr.get(k)
        if k == "budget" and o is not None and n is not None and n >= o:
            continue
        if _canon(o) != _canon(n):
            out.append((f"search.{k}", o, n))
    return out
