"""The compiled hot path: per view, straight-line Python for the common cases of the engine.

Per event, the generic code of :mod:`freshet.engine.tiles` costs a dozen method calls and loops over
small lists; at the target rate (> 150k events/s on one core) that overhead is most of the
budget. So each :class:`~freshet.engine.view_engine.ViewEngine` compiles, from its view's plan,
functions with every group and feature unrolled: ``apply`` (fold the event into every open tile
inline and read its row off the running state), ``apply_batch`` (the same body in a loop over a
batch: state lookup, rows, late events), ``fold``, ``values`` (no pending event, no tile older than
the window), ``values_at`` (the event row's values with pending events or such tiles) and
``expire`` (the expiry loop). Every uncommon case calls back into the generic methods:
out-of-order tiles, sketch mode, the fine sum scale. ``ViewEngine.source`` holds the generated
code; the engine's property tests run through it.

With 100,000 entities the code is bound by memory latency more than by bytecodes (the same
events ran ~2x faster over 1,000 entities), so the layout (:mod:`freshet.engine.tiles`) and this
code aim at touching few objects per event: the open tile's slots live in the entity's flat list,
its count and sums ride on the running totals, window max/min and exact distinct counts are
read from one cached slot each, and an empty pending list is None.
"""

from __future__ import annotations

import copy
from bisect import insort_right
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from freshet.dsl.expressions import RUNTIME, Expression
from freshet.engine.aggregations import EXACT_DISTINCT_LIMIT
from freshet.engine.tiles import (
    COARSE,
    FINE_SCALE,
    INV_TWO_64,
    NEVER,
    OUT_COUNT,
    OUT_MEAN,
    OUT_SUM,
    TWO_64,
    DistinctColumn,
    LifetimeFeatures,
    MaxColumn,
    MinColumn,
    PartialColumn,
    WindowGroup,
    to_coarse,
)
from freshet.sinks.rows import Row

__all__ = ["HotPathPlan", "compile_hot_path"]


@dataclass(frozen=True, kw_only=True)
class HotPathPlan:
    """What the compiler reads of a view's engine: its layout and the two callbacks the
    generated code calls (the engine's clock and its slow path for pending events)."""

    name: str
    input_fields: tuple[str, ...]  # the engine's fields (FeatureView.engine_fields)
    lateness: int  # ms
    width: int  # features per row
    groups: tuple[WindowGroup, ...]
    lifetime: LifetimeFeatures | None
    clock: Callable[[], int]
    fold_pending: Callable[..., None]
    # ``valid_after(st, as_of)``: the next expiry boundary after ``as_of`` (-1: none), for the
    # rows the fast path cannot read it off ``nb`` for.
    valid_after: Callable[..., int]
    # How many of ``input_fields`` the decoder gives (the rest are computed by ``derive``), the
    # ones that may be None, and the columns' and filters' expressions, in order.
    raw_fields: int = -1
    nullable: frozenset[int] = frozenset()
    expressions: tuple[tuple[str, Expression], ...] = ()


_new_row = tuple.__new__
_by_time = itemgetter(0)


def compile_hot_path(plan: HotPathPlan) -> dict[str, Any]:
    """Generate and compile the view's hot path; returns its namespace (and ``__source__``)."""
    env: dict[str, Any] = {
        "Row": Row, "new_row": _new_row, "insort": insort_right, "by_time": _by_time,
        "clock": plan.clock, "fold_pending": plan.fold_pending, "valid_after": plan.valid_after,
        "NEVER": NEVER, "COARSE": COARSE, "TWO_64": TWO_64, "INV_TWO_64": INV_TWO_64,
        "FINE_SCALE": FINE_SCALE, "LIMIT": EXACT_DISTINCT_LIMIT, "VIEW": plan.name,
        "LATENESS": plan.lateness, "WIDTH": plan.width, "to_coarse": to_coarse,
    }  # fmt: skip
    prelude, exprs = _value_exprs(plan, env)
    derive = _compile_derive(plan, env)
    late = ["        return None"]
    batch_late = ["        late.append(event)", "        continue"]
    batch_emit = [
        "    if exp is not None:",
        "        rows.extend(exp)",
        "        kafka_ts.extend([-1] * len(exp))",
        "    append_row(row)",
        "    append_ts(ts)",
        "    touched[entity] = st",
    ]
    emit = ["    if exp is None:", "        return [row]", "    exp.append(row)", "    return exp"]
    src = [
        *derive,
        "def apply(st, entity, t, fields, partition, offset):",
        *(["    fields = derive(fields)"] if derive else []),
        *_apply_body(plan, env, prelude, exprs, late, emit),
        "",
        "def apply_batch(states, events, missing, rows, kafka_ts, late, touched):",
        "    get = states.get",
        "    append_row = rows.append",
        "    append_ts = kafka_ts.append",
        "    for event in events:",
        "        entity, t, fields, partition, offset, ts = event",
        *(["        fields = derive(fields)"] if derive else []),
        "        st = get(entity)",
        "        if st is None:",
        "            st = missing(entity)",
        *_indent(_apply_body(plan, env, prelude, exprs, batch_late, batch_emit)),
        "",
        "def fold(st, t, fields, partition, offset):",
        *_coarse_sums(plan, env),
        "    nb = st.nb",
        "    d = st.d",
        *_compile_fold(plan, env),
        "",
        "def values(d):",
        *prelude,
        "    return (",
        *(f"        {e}," for e in exprs),
        "    )",
        "",
    ]
    src += _compile_values_at(plan, env)
    src += _compile_expire(plan, env)
    src += _compile_new_d(plan, env)
    source = "\n".join(src)
    exec(compile(source, f"<freshet engine {plan.name}>", "exec"), env)
    env["__source__"] = source
    return env


def _apply_body(
    plan: HotPathPlan,
    env: dict[str, Any],
    prelude: list[str],
    exprs: list[str],
    late: list[str],
    emit: list[str],
) -> list[str]:
    """The body of ``apply`` for one event ``st, entity, t, fields, partition, offset``:
    ``late`` are the lines run for a late event, ``emit`` those run with the event's ``row``
    and ``exp``, the expiry rows due before it (None: none)."""
    return [
        "    wm = st.wm",
        "    if t < wm:",
        *late,
        *_coarse_sums(plan, env),
        "    max_t = st.max_t",
        "    if t > max_t:",
        "        st.max_t = max_t = t",
        "        st.wall = clock()",
        "        if t - LATENESS > wm:",
        "            st.wm = wm = t - LATENESS",
        "    nb = st.nb",
        "    pending = st.pending",
        "    if (nb is not None and nb < wm) or (pending and pending[0][0] <= wm):",
        "        exp = []",
        "        expire(st, entity, exp)",
        "        nb = st.nb",
        "        pending = st.pending",
        "    else:",
        "        exp = None",
        "    if nb is not None and nb < t:  # an expiry row still due may need it left out",
        "        if pending is None:",
        "            st.pending = pending = [(t, fields, partition, offset)]",
        "        else:",
        "            insort(pending, (t, fields, partition, offset), key=by_time)",
        "        row = new_row(Row, (VIEW, entity, max_t, values_at(st, max_t, pending),"
        " partition, offset, valid_after(st, max_t)))",
        "    else:",
        "        d = st.d",
        *_indent(_compile_fold(plan, env)),
        "        if pending or (nb is not None and nb <= max_t):",
        "            row = new_row(Row, (VIEW, entity, max_t, values_at(st, max_t, pending),"
        " partition, offset, valid_after(st, max_t)))",
        "        else:",
        *_indent(_indent(prelude)),
        "            row = new_row(Row, (VIEW, entity, max_t, (",
        *(f"                {e}," for e in exprs),
        "            ), partition, offset, -1 if nb is None else nb))",
        *emit,
    ]


def _compile_new_d(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """``new_d()``: a new entity's flat state as one list display (fresh lists and dicts;
    other mutable partials are deep copies of a template's)."""
    template = [slot for g in plan.groups for slot in g.new_state()]
    if plan.lifetime is not None:
        template += plan.lifetime.new_state()
    env["TEMPLATE"] = template
    env["deepcopy"] = copy.deepcopy
    items = []
    for i, slot in enumerate(template):
        if type(slot) in (list, dict) and not slot:
            items.append("[]" if type(slot) is list else "{}")
        elif slot is None or type(slot) in (int, float, str, bool):
            items.append(repr(slot))
        else:
            items.append(f"deepcopy(TEMPLATE[{i}])")
    return ["def new_d():", f"    return [{', '.join(items)}]", ""]


def _compile_derive(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """``derive(fields)``: the decoder's fields followed by the view's columns and filters, each
    expression rendered inline (:meth:`Expression.render`); no lines when the view has none."""
    if not plan.expressions:
        return []
    env.update(RUNTIME)
    raw = plan.input_fields[: plan.raw_fields]
    code_of = {name: f"f{i}" for i, name in enumerate(raw)}
    src = ["def derive(fields):"]
    if raw:
        src.append(f"    {', '.join(code_of.values())}, = fields")
    for j, (name, expression) in enumerate(plan.expressions):
        src.append(f"    # {name} = {expression.text}")
        src.append(f"    e{j} = {expression.render(code_of, temp=f'_t{j}_')}")
        code_of[name] = f"e{j}"
    src.append(f"    return ({', '.join(code_of.values())},)")
    src.append("")
    return src


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line if line else line for line in lines]


def _coarse_sums(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """Lines binding ``f<i>`` and ``n<i>``, each summed double and its value at the coarse sum
    scale (None if off it), and refusing, before any state changes, a NaN or infinite one
    (exact sums cannot hold them; the decoder should dead-letter such events)."""
    names = plan.input_fields
    src = []
    for i in sorted({i for g in plan.groups for _, i in g.float_sums}):
        env["not_finite"] = _not_finite
        lines = [
            f"    x = f{i} * TWO_64",
            "    try:",
            f"        n{i} = int(x)",
            f"        if n{i} != x:",
            f"            n{i} = None",
            "    except (OverflowError, ValueError):",
            f"        if f{i} - f{i} != 0:",
            f"            not_finite(VIEW, {names[i]!r}, f{i})",
            f"        n{i} = None  # finite, but too large for the coarse scale",
        ]
        src.append(f"    f{i} = fields[{i}]")
        if i in plan.nullable:  # a null is skipped: its group's filter is false
            src += [f"    if f{i} is None:", f"        n{i} = None", "    else:", *_indent(lines)]
        else:
            src += lines
    return src


def _not_finite(view: str, field: str, value: float) -> None:
    raise ValueError(
        f"view {view!r}: field {field!r} = {value!r} is not a finite number; sums need finite "
        "values (the decoder should send such events to the dead-letter topic)"
    )


def _compile_fold(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """Lines folding event ``t, fields`` into every tile and lifetime partial, in place
    (``st``, ``d = st.d`` and ``nb`` in scope; ``nb`` is stored back to ``st.nb``)."""
    fields = sorted(
        {i for g in plan.groups for _, i in g.int_sums + g.float_sums}
        | {c.field for g in plan.groups for c in g.columns}
        | ({i for i in plan.lifetime.fields if i >= 0} if plan.lifetime else set())
    )
    float_fields = sorted({i for g in plan.groups for _, i in g.float_sums})
    src = [
        "    if offset >= st.foff:",
        "        st.foff = offset",
        "        st.fpart = partition",
    ]
    src += [f"    f{i} = fields[{i}]" for i in fields if i not in float_fields]
    for g, group in enumerate(plan.groups):
        group_src = _compile_fold_group(plan, env, g, group)
        if group.pred is not None:
            group_src = [f"    if fields[{group.pred}]:  # the group's filter", *_indent(group_src)]
        src += group_src
    src += ["    st.nb = nb"]
    if plan.lifetime is not None:
        lifetime = plan.lifetime
        for i, (agg, index, is_last, x) in enumerate(
            zip(lifetime.aggs, lifetime.fields, lifetime.is_last, lifetime.slots, strict=True)
        ):
            env[f"L{i}"] = agg
            if is_last:
                lines = [
                    f"    if t > d[{x}] or (t == d[{x}] and offset >= d[{x + 1}]):",
                    f"        d[{x}] = t",
                    f"        d[{x + 1}] = offset",
                    f"        d[{x + 2}] = f{index}",
                ]
            else:
                value = f"f{index}" if index >= 0 else "None"
                if lifetime.stamped[i]:
                    value = f"(t, offset, {value})"
                lines = [f"    d[{x}] = L{i}.add(d[{x}], t, {value})"]
            pred = lifetime.preds[i]
            if pred is not None:
                lines = [f"    if fields[{pred}]:", *_indent(lines)]
            src += lines
    return src


def _compile_fold_group(
    plan: HotPathPlan, env: dict[str, Any], g: int, group: WindowGroup
) -> list[str]:
    """The fold lines of window group ``g`` (see :func:`_compile_fold`)."""
    src: list[str] = []
    env[f"G{g}"] = group
    h, w, o, kix = group.h, group.w, group.o, group.kix
    src += [f"    # window {w} ms, hop {h} ms: d[{o}:{o + group.size}], open tile at {kix}"]
    # Sums first: a value off the coarse scale rewrites every tile at the fine scale.
    for i, index in group.float_sums:
        src += [
            f"    x{i} = n{index} if n{index} is not None and d[{o + 1}] == COARSE"
            f" else G{g}.scaled(d, f{index})"
        ]
    float_slots = {i for i, _ in group.float_sums}
    sums = {
        i: f"x{i}" if i in float_slots else f"f{dict(group.int_sums)[i]}"
        for i in range(2, 2 + group.nsums)
    }
    # (1) The event falls into the open tile: its count and sums are the running totals
    # minus their values when it opened, so only the totals change.
    same = [f"        d[{o + 2}] += 1"]
    same += [f"        d[{o + 1 + i}] += {v}" for i, v in sums.items()]
    # (2) It opens a new newest tile (the open one, if any, is sealed into ``tiles``).
    opened = ["k", *[f"d[{o + 1 + i}]" for i in range(1, 2 + group.nsums)]]
    fresh = [
        "        if kk is not None:",
        f"            tile = d[{kix}:{kix + group.tlen}]  # seal the open tile",
        *[f"            tile[{i}] = d[{o + 1 + i}] - tile[{i}]" for i in range(1, 2 + group.nsums)],
        "            tiles.append(tile)",
        "        elif not tiles:",
        f"            b = (k + 1) * {h} + {w}",
        "            if nb is None or b < nb:",
        "                nb = b",
    ]
    for j, column in enumerate(group.columns):
        env[f"C{g}_{j}"] = column
        c, gc, v = kix + column.tcol, column.gcol, f"f{column.field}"
        if type(column) in (MaxColumn, MinColumn):
            better = ">" if type(column) is MaxColumn else "<"
            worse = "<=" if type(column) is MaxColumn else ">="
            same += [
                f"        m = d[{c}]",
                f"        if m is None or {v} {better} m:",
                f"            d[{c}] = {v}",
                f"            queue = d[{gc}]",
                f"            while queue and queue[-1][1] {worse} {v}:",
                "                queue.pop()",
                "            if not queue:",
                f"                d[{gc + 1}] = {v}",
                f"            queue.append((k, {v}))",
            ]
            opened.append(v)
            fresh += [
                f"        queue = d[{gc}]",
                f"        while queue and queue[-1][1] {worse} {v}:",
                "            queue.pop()",
                "        if not queue:",
                f"            d[{gc + 1}] = {v}",
                f"        queue.append((k, {v}))",
            ]
        elif type(column) is DistinctColumn:
            exact = [
                f"                m = counts.get({v}, 0)",
                f"                counts[{v}] = m + 1",
                "                if not m:",
                f"                    d[{gc + 1}] += 1",
                "                    if len(counts) > LIMIT:",
                f"                        G{g}.to_sketch(d, {j})",
            ]
            same += [
                f"        counts = d[{gc}]",
                "        if type(counts) is dict:",
                f"            seen = d[{c}]",
                f"            if {v} not in seen:",
                f"                seen.add({v})",
                *exact,
                "        else:",
                f"            d[{c}].add({v})",
            ]
            opened.append(f"p{j}")
            fresh += [
                f"        counts = d[{gc}]",
                "        if type(counts) is dict:",
                f"            p{j} = {{{v}}}",
                *[line[4:] for line in exact[:2]],
                "            if not m:",
                f"                d[{gc + 1}] += 1",
                "        else:",
                f"            p{j} = C{g}_{j}.new_tile(d)",
                f"            p{j}.add({v})",
            ]
        else:  # a sketch per tile
            if column.stamped:
                v = f"(t, offset, {v})"
            same += [f"        d[{c}].add({v})"]
            opened.append(f"p{j}")
            fresh += [f"        p{j} = C{g}_{j}.new_tile(d)", f"        p{j}.add({v})"]
    fresh += [f"        d[{kix}:{kix + group.tlen}] = ({', '.join(opened)},)"]
    fresh += [f"        d[{o + 2}] += 1"]
    fresh += [f"        d[{o + 1 + i}] += {v}" for i, v in sums.items()]
    for j, column in enumerate(group.columns):  # the limit is checked once the tile is open
        if type(column) is DistinctColumn:
            fresh += [
                f"        counts = d[{column.gcol}]",
                "        if type(counts) is dict and len(counts) > LIMIT:",
                f"            G{g}.to_sketch(d, {j})",
            ]
    src += [
        f"    k = t // {h}",
        f"    kk = d[{kix}]",
        "    if kk == k:",
        *same,
        "    else:",
        f"        tiles = d[{o}]",
        "        if kk < k if kk is not None else not tiles or tiles[-1][0] < k:",
        *_indent(fresh),
        "        else:  # an older tile: the general path",
        f"            b = G{g}.fold(d, t, fields, offset)",
        "            if b is not None and (nb is None or b < nb):",
        "                nb = b",
    ]
    return src


def _value_exprs(plan: HotPathPlan, env: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Every feature read off the running state (no pending event, no tile older than the
    window): prelude lines over ``d``, and one expression per feature."""
    src: list[str] = []
    exprs: dict[int, str] = {}
    for g, group in enumerate(plan.groups):
        o = group.o
        count = f"d[{o + 2}]"
        for position, kind, index, arg in group.outputs:
            if kind == OUT_COUNT:
                exprs[position] = count
            elif kind in (OUT_SUM, OUT_MEAN):
                total = f"d[{o + 1 + index}]"
                if arg:  # a float sum at the group's scale
                    name = f"s{g}_{index}"
                    line = (
                        f"    {name} = {total} * INV_TWO_64 if d[{o + 1}] == COARSE"
                        f" else {total} / FINE_SCALE"
                    )
                    if line not in src:
                        src.append(line)
                    total = name
                if kind == OUT_SUM:
                    exprs[position] = total
                else:
                    exprs[position] = f"({total} / {count} if {count} else None)"
            else:
                column = group.columns[index]
                env[f"C{g}_{index}"] = column
                env[f"A{position}"] = arg
                slow = f"G{g}.column_value(d, {index}, A{position})"
                if type(column) in (MaxColumn, MinColumn):
                    exprs[position] = f"d[{column.gcol + 1}]"
                elif isinstance(column, PartialColumn):
                    exprs[position] = f"C{g}_{index}.open_value(d, {group.kix}, A{position})"
                elif type(column) is DistinctColumn:
                    src += [f"    n{position} = d[{column.gcol + 1}]"]
                    exprs[position] = f"(n{position} if n{position} is not None else {slow})"
                else:
                    exprs[position] = slow
    if plan.lifetime is not None:
        lifetime = plan.lifetime
        for i, (agg, position, is_last, x) in enumerate(
            zip(lifetime.aggs, lifetime.positions, lifetime.is_last, lifetime.slots, strict=True)
        ):
            env[f"L{i}"] = agg
            exprs[position] = f"d[{x + 2}]" if is_last else f"L{i}.result(d[{x}])"
    return src, [exprs[p] for p in sorted(exprs)]


def _compile_values_at(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """``values_at(st, as_of, pending)``: the event row's values when events are pending or
    tiles older than the window are still held; groups in a rare state (fine sum scale, sketch
    mode, a pending value off the coarse scale) go through ``WindowGroup.values``."""
    src = [
        "def values_at(st, as_of, pending):",
        "    if pending is None:",
        "        pending = ()",
        "    d = st.d",
        "    out = [None] * WIDTH",
    ]
    for g, group in enumerate(plan.groups):
        start = len(src)
        env[f"G{g}"] = group
        h, n, o = group.h, group.n, group.o
        rare = []
        if group.float_sums:
            rare.append(f"d[{o + 1}] != COARSE")
        for column in group.columns:
            if type(column) is DistinctColumn:
                rare.append(f"type(d[{column.gcol}]) is not dict")
            elif type(column) not in (MaxColumn, MinColumn):
                rare.append("True")
        sums = [f"s{i}" for i in range(2, 2 + group.nsums)]
        kix = group.kix
        src += [
            f"    # window {group.w} ms, hop {h} ms",
            f"    tiles = d[{o}]",
            f"    c = as_of // {h} - {n}",
            f"    rare = {' or '.join(rare) or 'False'}",
            "    if not rare:",
            f"        count = d[{o + 2}]",
            *[f"        {name} = d[{o + 3 + i}]" for i, name in enumerate(sums)],
            "        shadow = 0",
            "        if tiles and tiles[0][0] < c:",
            "            for tile in tiles:",
            "                if tile[0] >= c:",
            "                    break",
            "                shadow += 1",
            "                count -= tile[1]",
            *[f"                {name} -= tile[{i + 2}]" for i, name in enumerate(sums)],
            f"        kk = d[{kix}]",
            "        if kk is not None and kk < c and shadow == len(tiles):  # the open tile too",
            "            shadow += 1",
            f"            count -= d[{o + 2}] - d[{kix + 1}]",
            *[
                f"            {name} -= d[{o + 3 + i}] - d[{kix + 2 + i}]"
                for i, name in enumerate(sums)
            ],
            "        if pending:",
            "            count += len(pending)",
            "            for e in pending:",
            "                f = e[1]",
        ]
        float_slots = {i for i, _ in group.float_sums}
        for i, index in group.int_sums + group.float_sums:
            if i in float_slots:
                src += [
                    f"                x = to_coarse(f[{index}])",
                    "                if x is None:",
                    "                    rare = True",
                    "                    break",
                    f"                s{i} += x",
                ]
            else:
                src += [f"                s{i} += f[{index}]"]
        src += [
            "    if rare:",
            f"        G{g}.seal(d)",
            f"        G{g}.values(d, as_of, pending, out)",
            f"        G{g}.unseal(d)",
            "    else:",
        ]
        for position, kind, index, arg in group.outputs:
            if kind == OUT_COUNT:
                src += [f"        out[{position}] = count"]
            elif kind in (OUT_SUM, OUT_MEAN):
                total = f"s{index} * INV_TWO_64" if arg else f"s{index}"
                if kind == OUT_SUM:
                    src += [f"        out[{position}] = {total}"]
                else:
                    src += [f"        out[{position}] = {total} / count if count else None"]
            else:
                column = group.columns[index]
                env[f"C{g}_{index}"] = column
                gc, fi = column.gcol, column.field
                if type(column) in (MaxColumn, MinColumn):
                    better = ">" if type(column) is MaxColumn else "<"
                    src += [
                        "        best = None",
                        f"        for kk, v in d[{gc}]:",
                        "            if kk >= c:",
                        "                best = v",
                        "                break",
                        "        for e in pending:",
                        f"            v = e[1][{fi}]",
                        f"            if best is None or v {better} best:",
                        "                best = v",
                        f"        out[{position}] = best",
                    ]
                else:  # exact distinct count
                    src += [
                        f"        counts = d[{gc}]",
                        "        distinct = len(counts)",
                        "        if not shadow:",
                        f"            new = {{e[1][{fi}] for e in pending}}.difference(counts)",
                        "            distinct += len(new)",
                        "        if shadow or distinct > LIMIT:",
                        f"            extra = [e[1][{fi}] for e in pending]",
                        f"            G{g}.seal(d)  # the generic path reads every tile",
                        f"            distinct = C{g}_{index}.value(d, c, shadow, extra, None)",
                        f"            G{g}.unseal(d)",
                        f"        out[{position}] = distinct",
                    ]
        if group.pred is not None:  # only the pending events that pass the group's filter
            src[start:] = [
                f"    pending{g} = [e for e in pending if e[1][{group.pred}]]",
                *(line.replace("pending", f"pending{g}") for line in src[start:]),
            ]
    if plan.lifetime is not None:
        lifetime = plan.lifetime
        for i, (agg, index, position, is_last, x) in enumerate(
            zip(
                lifetime.aggs, lifetime.fields, lifetime.positions, lifetime.is_last,
                lifetime.slots, strict=True,
            )
        ):  # fmt: skip
            env[f"L{i}"] = agg
            pred = lifetime.preds[i]
            passing = "pending" if pred is None else f"pending if e[1][{pred}]"
            if is_last:
                src += [
                    f"    best = (d[{x}], d[{x + 1}])",
                    f"    value = d[{x + 2}]",
                    f"    for e in {'pending' if pred is None else f'[e for e in {passing}]'}:",
                    "        if (e[0], e[3]) >= best:",
                    "            best = (e[0], e[3])",
                    f"            value = e[1][{index}]",
                    f"    out[{position}] = value",
                ]
            else:
                value = f"e[1][{index}]" if index >= 0 else "None"
                if lifetime.stamped[i]:
                    value = f"(e[0], e[3], {value})"
                src += [
                    f"    extra = [(e[0], {value}) for e in {passing}]",
                    f"    out[{position}] = L{i}.peek(d[{x}], extra)",
                ]
    src += ["    return tuple(out)", ""]
    return src


def _compile_expire(plan: HotPathPlan, env: dict[str, Any]) -> list[str]:
    """``expire(st, entity, rows)``: emit every boundary below the watermark, in order, folding
    pending events as the boundaries pass them (see ``ViewEngine.advance``)."""
    src = [
        "def expire(st, entity, rows):",
        "    wm = st.wm",
        "    d = st.d",
        "    while True:",
        "        nb = st.nb",
        "        pending = st.pending",
        "        if pending:",
        "            limit = wm if nb is None or nb > wm else nb",
        "            if pending[0][0] <= limit:",
        "                fold_pending(st, limit)",
        "                nb = st.nb",
        "        if nb is None or nb >= wm:",
        "            return",
        "        following = None",
    ]
    for g, group in enumerate(plan.groups):
        h, w, o = group.h, group.w, group.o
        kix = group.kix
        env[f"G{g}"] = group
        # Sealing is needed only when the open tile goes too, or for a column in a rare state
        # (sketches); otherwise the open tile's bases follow the totals down.
        rare = ["kk < c"]
        for column in group.columns:
            if type(column) is DistinctColumn:
                rare.append(f"type(d[{column.gcol}]) is not dict")
            elif type(column) not in (MaxColumn, MinColumn):
                rare.append("True")
        src += [
            f"        # window {w} ms, hop {h} ms: drop the tiles whose boundary is nb",
            f"        tiles = d[{o}]",
            f"        first = tiles[0][0] if tiles else d[{kix}]",
            f"        if first is not None and (first + 1) * {h} + {w} <= nb:",
            f"            c = (nb - {w}) // {h}",
            f"            kk = d[{kix}]",
            f"            if kk is not None and ({' or '.join(rare)}):",
            f"                G{g}.seal(d)",
            "                kk = None",
            "            while tiles and tiles[0][0] < c:",
            "                tile = tiles.pop(0)",
            f"                d[{o + 2}] -= tile[1]",
        ]
        src += [f"                d[{o + 1 + i}] -= tile[{i}]" for i in range(2, 2 + group.nsums)]
        src += [
            "                if kk is not None:",
            *[f"                    d[{kix + i}] -= tile[{i}]" for i in range(1, 2 + group.nsums)],
        ]
        for j, column in enumerate(group.columns):
            env[f"C{g}_{j}"] = column
            c, gc = column.tcol, column.gcol
            if type(column) in (MaxColumn, MinColumn):
                src += [
                    f"                queue = d[{gc}]",
                    "                while queue and queue[0][0] <= tile[0]:",
                    "                    del queue[0]",
                    f"                d[{gc + 1}] = queue[0][1] if queue else None",
                ]
            elif type(column) is DistinctColumn:
                src += [
                    f"                counts = d[{gc}]",
                    "                if type(counts) is dict:",
                    f"                    for v in tile[{c}]:",
                    "                        n = counts[v] - 1",
                    "                        if n:",
                    "                            counts[v] = n",
                    "                        else:",
                    "                            del counts[v]",
                    f"                    d[{gc + 1}] = len(counts)",
                    "                else:",
                    f"                    C{g}_{j}.drop(d, [tile])",
                ]
            else:
                src += [f"                C{g}_{j}.drop(d, [tile])"]
        src += [
            f"            if d[{kix}] is not None:",
            "                pass",
            "            elif not tiles:  # the window is empty",
            *[f"                d[{o + 2 + i}] = 0" for i in range(1 + group.nsums)],
            f"                d[{o + 1}] = COARSE",
            "            else:",
            f"                G{g}.unseal(d)",
            f"            first = tiles[0][0] if tiles else d[{kix}]",
            "        if first is not None:",
            f"            b = (first + 1) * {h} + {w}",
            "            if following is None or b < following:",
            "                following = b",
        ]
    src += [
        "        st.nb = following",
        # Pending events are newer than nb: as of nb, the next change is the next boundary.
        "        rows.append(new_row(Row, (VIEW, entity, nb, values(d), st.fpart, st.foff,"
        " -1 if following is None else following)))",
        "",
    ]
    return src
