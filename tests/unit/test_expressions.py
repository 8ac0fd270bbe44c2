"""Expressions (``freshet.dsl.expressions``): each construct, each null rule, the refusals and
their messages, rendering, and a property test: the rendered code agrees with an independent
tree-walking evaluator of the documented semantics, never raises, and gives None only where the
expression says it is nullable."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.dsl.expressions import (
    FUNCTIONS,
    RUNTIME,
    Expression,
    ExpressionError,
    NameType,
    compile_expression,
)

NAMES: dict[str, NameType] = {
    "amount": NameType("float64"),
    "fee": NameType("float64", nullable=True),
    "count": NameType("int64"),
    "qty": NameType("int64", nullable=True),
    "merchant": NameType("string"),
    "note": NameType("string", nullable=True),
    "big": NameType("bool"),
    "flag": NameType("bool", nullable=True),
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def compiled(text: str) -> Expression:
    return compile_expression(text, NAMES, what="test")


def evaluate(text: str, **values: Any) -> Any:
    return compiled(text).evaluate(values)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same Python type, and for floats of the same sign (0.0 is not -0.0)."""
    if a is None or b is None:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def refused(text: str, *, dotted: bool = False, names: dict[str, NameType] = NAMES) -> str:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, names, what="view 'v': column 'c'", dotted=dotted)
    return str(caught.value)


# --- Values ---------------------------------------------------------------------------------------

# (text, values, result): the result's Python type is checked too (1 is not 1.0).
VALUES: list[tuple[str, dict[str, Any], Any]] = [
    # literals and names
    ("count", {"count": 7}, 7),
    ("-9223372036854775808", {}, INT64_MIN),
    ("'é' + merchant", {"merchant": "x"}, "éx"),
    ("True", {}, True),
    ("-0.0", {}, -0.0),
    # arithmetic
    ("count + 2", {"count": 5}, 7),
    ("count - 7", {"count": 5}, -2),
    ("count * 3", {"count": 5}, 15),
    ("count / 2", {"count": 5}, 2.5),
    ("count / 5", {"count": 5}, 1.0),
    ("count // 2", {"count": -5}, -3),
    ("count % 3", {"count": -5}, 1),
    ("count % -3", {"count": 5}, -1),
    ("amount + count", {"amount": 0.5, "count": 2}, 2.5),
    ("count * amount", {"amount": 0.5, "count": 2}, 1.0),
    ("amount // 2", {"amount": 5.5}, 2.0),
    ("amount % 2", {"amount": -5.5}, 0.5),
    ("-amount", {"amount": 0.0}, -0.0),
    ("-count", {"count": 3}, -3),
    ("+count", {"count": 3}, 3),
    ("merchant + '!'", {"merchant": "shop"}, "shop!"),
    # comparisons
    ("amount >= 100.0", {"amount": 100.0}, True),
    ("amount < count", {"amount": 1.5, "count": 2}, True),
    ("count == 9223372036854775807.0", {"count": INT64_MAX}, False),  # exact, not via float
    ("0 < count <= 10", {"count": 10}, True),
    ("0 < count <= 10", {"count": 0}, False),
    ("1 < 2 < count", {"count": 2}, False),
    ("merchant < 'b'", {"merchant": "a"}, True),
    ("merchant != 'é'", {"merchant": "e"}, True),
    ("big == True", {"big": True}, True),
    ("big != flag", {"big": True, "flag": False}, True),
    # in, is None
    ("count in (1, 2, 3)", {"count": 2}, True),
    ("count not in (1, 2, 3)", {"count": 2}, False),
    ("amount in [1, 2.5]", {"amount": 1.0}, True),
    ("merchant in {'a', 'b'}", {"merchant": "c"}, False),
    ("big in (True,)", {"big": False}, False),
    ("count in ()", {"count": 1}, False),
    ("qty is None", {"qty": None}, True),
    ("qty is not None", {"qty": None}, False),
    ("count is None", {"count": 0}, False),
    # conditional
    ("'big' if amount > 100 else 'small'", {"amount": 150.0}, "big"),
    ("count if big else amount", {"count": 2, "big": True, "amount": 0.5}, 2.0),
    ("None if big else count", {"big": True, "count": 2}, None),
    ("None if big else count", {"big": False, "count": 2}, 2),
    # functions
    ("abs(count)", {"count": -3}, 3),
    ("abs(amount)", {"amount": -0.0}, 0.0),
    ("round(amount)", {"amount": 0.5}, 0),
    ("round(amount)", {"amount": 1.5}, 2),
    ("round(amount)", {"amount": 2.5}, 2),
    ("round(amount)", {"amount": -2.5}, -2),
    ("round(amount)", {"amount": -0.4}, 0),
    ("round(count)", {"count": 7}, 7),
    ("round(amount, 1)", {"amount": 0.25}, 0.2),
    ("round(amount, 2)", {"amount": 2.675}, 2.67),  # 2.675 is 2.67499999... as a float
    ("round(amount, -1)", {"amount": 25.0}, 20.0),
    ("round(count, -1)", {"count": 35}, 40.0),
    ("round(count, 2)", {"count": 35}, 35.0),
    ("min(count, 2)", {"count": 5}, 2),
    ("max(count, amount, 1)", {"count": 5, "amount": 0.5}, 5.0),
    ("min(amount, count)", {"count": 0, "amount": -0.0}, -0.0),
    ("lower(merchant)", {"merchant": "ÉCOLE"}, "école"),
    ("upper(merchant)", {"merchant": "straße"}, "STRASSE"),
    ("len(merchant)", {"merchant": "日本"}, 2),
    ("coalesce(qty, count)", {"qty": None, "count": 4}, 4),
    ("coalesce(qty, count)", {"qty": 3, "count": 4}, 3),
    ("coalesce(qty, fee, 0)", {"qty": None, "fee": None}, 0.0),
    ("coalesce(qty, fee, 0)", {"qty": 2, "fee": 1.5}, 2.0),
    ("coalesce(note, None, 'none')", {"note": None}, "none"),
    ("coalesce(flag, None)", {"flag": None}, None),
]


@pytest.mark.parametrize(("text", "values", "expected"), VALUES)
def test_each_construct_evaluates_as_documented(
    text: str, values: dict[str, Any], expected: Any
) -> None:
    assert same(evaluate(text, **values), expected)


# --- Nulls ----------------------------------------------------------------------------------------

NULLS: list[tuple[str, dict[str, Any], Any]] = [
    # a null operand gives null
    ("qty + 1", {"qty": None}, None),
    ("fee * amount", {"fee": None, "amount": 1.0}, None),
    ("-qty", {"qty": None}, None),
    ("note + 'x'", {"note": None}, None),
    ("qty > 1", {"qty": None}, None),
    ("0 < qty < 10", {"qty": None}, None),
    ("1 > 2 > qty", {"qty": None}, None),  # a chain is one comparison: null
    ("flag == True", {"flag": None}, None),
    ("qty in (1, 2)", {"qty": None}, None),
    ("qty not in (1, 2)", {"qty": None}, None),
    ("abs(fee)", {"fee": None}, None),
    ("round(fee)", {"fee": None}, None),
    ("round(fee, 1)", {"fee": None}, None),
    ("round(fee, -1)", {"fee": None}, None),
    ("round(qty, -1)", {"qty": None}, None),
    ("min(qty, 1)", {"qty": None}, None),
    ("max(1, fee)", {"fee": None}, None),
    ("lower(note)", {"note": None}, None),
    ("upper(note)", {"note": None}, None),
    ("len(note)", {"note": None}, None),
    # a null condition takes the else branch
    ("1 if flag else 2", {"flag": None}, 2),
    ("1 if qty > 0 else 2", {"qty": None}, 2),
    # division by zero
    ("count / 0", {"count": 1}, None),
    ("count / qty", {"count": 1, "qty": 0}, None),
    ("count // qty", {"count": 1, "qty": 0}, None),
    ("count % qty", {"count": 1, "qty": 0}, None),
    ("amount / fee", {"amount": 1.0, "fee": 0.0}, None),
    ("amount / fee", {"amount": 1.0, "fee": -0.0}, None),
    ("amount // 0", {"amount": 1.0}, None),
    ("amount % fee", {"amount": 1.0, "fee": 0.0}, None),
    ("(count / 0) is None", {"count": 1}, True),
    # floats that are not finite, at every step
    ("amount * 1e308 * 10 > 5", {"amount": 1.0}, None),
    ("amount * 1e308", {"amount": 10.0}, None),
    ("amount + 1e308", {"amount": 1e308}, None),
    ("amount * 1e308 * 10 * 0", {"amount": 1.0}, None),  # inf * 0 is NaN: still null
    ("amount * 1e308 * 10 - amount * 1e308 * 10", {"amount": 1.0}, None),
    ("1 / (amount * 1e308 * 10)", {"amount": 1.0}, None),  # not 0.0
    ("-(amount * 1e308 * 10) + 1", {"amount": 1.0}, None),
    ("abs(amount * 1e308 * 10)", {"amount": 1.0}, None),
    ("amount / 1e-308", {"amount": 10.0}, None),
    ("amount / 0.5", {"amount": 1e308}, None),
    ("amount // 1e-308", {"amount": 1e308}, None),
    ("count / 1e-320", {"count": 5}, None),
    ("(amount * 1e308 * 10 if big else 1.0) + 1", {"amount": 1.0, "big": True}, None),
    ("coalesce(amount * 1e308 * 10, 1.0)", {"amount": 1.0}, 1.0),
    ("max(amount * 1e308 * 10, 1.0)", {"amount": 1.0}, None),
    ("round(amount, -308)", {"amount": 1.7976931348623157e308}, None),
    ("round(amount * 1e308 * 10, 2)", {"amount": 1.0}, None),
    ("round(amount * 1e308 * 10, -2)", {"amount": 1.0}, None),
    # int64 overflow, at every step
    ("count + 1", {"count": INT64_MAX}, None),
    ("count - 1", {"count": INT64_MIN}, None),
    ("count * 2", {"count": 2**62}, None),
    ("count + 1 - 1", {"count": INT64_MAX}, None),
    ("-count", {"count": INT64_MIN}, None),
    ("abs(count)", {"count": INT64_MIN}, None),
    ("count // -1", {"count": INT64_MIN}, None),
    ("count // qty", {"count": INT64_MIN, "qty": -1}, None),
    ("-(count + 0)", {"count": INT64_MIN}, None),
    ("round(amount)", {"amount": 9.223372036854776e18}, None),  # 2**63
    ("round(amount)", {"amount": -9.223372036854776e18}, INT64_MIN),
    ("round(amount)", {"amount": 1e300}, None),
    ("round(amount * 1e308 * 10)", {"amount": 1.0}, None),
    ("count - 1", {"count": INT64_MAX}, INT64_MAX - 1),
    ("-count", {"count": INT64_MAX}, -INT64_MAX),
]


@pytest.mark.parametrize(("text", "values", "expected"), NULLS)
def test_null_rules(text: str, values: dict[str, Any], expected: Any) -> None:
    assert same(evaluate(text, **values), expected)


T, F, N = True, False, None
AND = {(T, T): T, (T, F): F, (T, N): N, (F, T): F, (F, F): F, (F, N): F,
       (N, T): N, (N, F): F, (N, N): N}  # fmt: skip
OR = {(T, T): T, (T, F): T, (T, N): T, (F, T): T, (F, F): F, (F, N): N,
      (N, T): T, (N, F): N, (N, N): N}  # fmt: skip


@pytest.mark.parametrize(("a", "b"), list(AND))
def test_and_or_use_three_valued_logic(a: bool | None, b: bool | None) -> None:
    names = {"a": NameType("bool", nullable=True), "b": NameType("bool", nullable=True)}
    sure = {"a": NameType("bool"), "b": NameType("bool", nullable=True)}
    for op, table in (("and", AND), ("or", OR)):
        got = compile_expression(f"a {op} b", names, what="t").evaluate({"a": a, "b": b})
        assert same(got, table[a, b])
        if a is not None:  # one operand that cannot be null: another rendering
            got = compile_expression(f"a {op} b", sure, what="t").evaluate({"a": a, "b": b})
            assert same(got, table[a, b])
            got = compile_expression(f"b {op} a", sure, what="t").evaluate({"a": a, "b": b})
            assert same(got, table[b, a])


@pytest.mark.parametrize("values", [(T, N, F), (N, N, T), (T, T, T), (N, T, T), (F, N, N)])
def test_three_operand_logic_and_not(values: tuple[bool | None, ...]) -> None:
    names = {n: NameType("bool", nullable=True) for n in "abc"}
    env = dict(zip("abc", values, strict=True))
    conj = F if F in values else N if N in values else T
    disj = T if T in values else N if N in values else F
    assert same(compile_expression("a and b and c", names, what="t").evaluate(env), conj)
    assert same(compile_expression("a or b or c", names, what="t").evaluate(env), disj)
    negation = None if values[0] is None else not values[0]
    assert same(compile_expression("not a", names, what="t").evaluate(env), negation)


# --- Types and nullability ------------------------------------------------------------------------

TYPES: list[tuple[str, str, bool]] = [
    ("count", "int64", False),
    ("qty", "int64", True),
    ("count + 1", "int64", True),  # int64 overflow
    ("count / 2", "float64", True),  # division
    ("count % 2", "int64", True),
    ("amount * 2", "float64", True),  # float overflow
    ("amount + count", "float64", True),
    ("-amount", "float64", False),
    ("-count", "int64", True),
    ("-fee", "float64", True),
    ("merchant + 'x'", "string", False),
    ("note + 'x'", "string", True),
    ("amount >= 100.0", "bool", False),
    ("qty > 1", "bool", True),
    ("0 < count < qty", "bool", True),
    ("big and count > 1", "bool", False),
    ("big and flag", "bool", True),
    ("not flag", "bool", True),
    ("qty is None", "bool", False),
    ("count in (1, 2.5)", "bool", False),
    ("qty in (1, 2)", "bool", True),
    ("count if big else amount", "float64", False),
    ("count if flag else 1", "int64", False),
    ("None if big else merchant", "string", True),
    ("abs(amount)", "float64", False),
    ("abs(count)", "int64", True),
    ("round(amount)", "int64", True),
    ("round(count)", "int64", False),
    ("round(amount, 2)", "float64", False),
    ("round(amount, -2)", "float64", True),
    ("round(count, -2)", "float64", False),
    ("min(count, 2)", "int64", False),
    ("max(count, fee)", "float64", True),
    ("lower(merchant)", "string", False),
    ("len(note)", "int64", True),
    ("coalesce(qty, count)", "int64", False),
    ("coalesce(qty, fee)", "float64", True),
    ("coalesce(note, None)", "string", True),
]


@pytest.mark.parametrize(("text", "type_", "nullable"), TYPES)
def test_types_and_nullability_are_inferred(text: str, type_: str, nullable: bool) -> None:
    expression = compiled(text)
    assert (expression.type, expression.nullable) == (type_, nullable)


def test_names_are_listed_once_in_order_of_first_use() -> None:
    assert compiled("qty + count + qty").names == ("qty", "count")
    assert compiled("count if big else qty").names == ("count", "big", "qty")
    assert compiled("1 + 2").names == ()


def test_text_is_kept_verbatim_and_expressions_compare_by_content() -> None:
    assert compiled(" amount  >= 1 ").text == " amount  >= 1 "
    assert compiled("amount >= 1") == compiled("amount >= 1")
    assert hash(compiled("amount >= 1")) == hash(compiled("amount >= 1"))
    assert compiled("amount >= 1") != compiled("amount >= 2")


def test_dotted_names_when_allowed() -> None:
    names = {"request.amount": NameType("float64"), "card_txn.amount_mean_1h": NameType("float64")}
    derived = compile_expression(
        "request.amount / card_txn.amount_mean_1h", names, what="service 's'", dotted=True
    )
    assert derived.names == ("request.amount", "card_txn.amount_mean_1h")
    assert derived.evaluate({"request.amount": 3.0, "card_txn.amount_mean_1h": 2.0}) == 1.5
    assert derived.evaluate({"request.amount": 3.0, "card_txn.amount_mean_1h": 0.0}) is None
    assert "attribute access is not allowed" in refused("request.amount", names=names)
    message = refused("request.amt", names=names, dotted=True)
    assert "attribute access is not allowed" in message
    assert "'request.amt' is not a known name; known: card_txn.amount_mean_1h, request.amount" in (
        message
    )
    assert "attribute access is not allowed" in refused("a.b.c", names=names, dotted=True)


# --- Refusals -------------------------------------------------------------------------------------


def test_a_type_error_names_the_expression_and_points_at_the_operator() -> None:
    message = refused("amount > 'x'")
    assert message == (
        "view 'v': column 'c': \"amount > 'x'\": cannot compare float64 with string"
        " (at column 7: amount > 'x')"
    )


def test_an_unknown_name_lists_the_known_ones() -> None:
    assert refused("amout + 1") == (
        "view 'v': column 'c': 'amout + 1': unknown name 'amout'; known: amount, big, count,"
        " fee, flag, merchant, note, qty (at column 0: amout)"
    )


# (text, fragments the message must hold): each message also names the expression
REFUSALS: list[tuple[str, list[str]]] = [
    ("exp(amount)", ["function 'exp' is not allowed", ", ".join(FUNCTIONS), "column 0: exp"]),
    ("__import__('os')", ["function '__import__' is not allowed"]),
    ("amount.real", ["attribute access is not allowed", "column 0: amount.real"]),
    ("merchant.lower()", ["attribute access is not allowed", "use lower(s)"]),
    ("merchant[0]", ["subscripts are not allowed", "merchant[0]"]),
    ("merchant[1:]", ["subscripts are not allowed"]),
    ("(lambda: 1)()", ["lambda is not allowed", "column 1: lambda: 1"]),
    ("lambda: 1", ["lambda is not allowed"]),
    ("amount ** 2", ["operator '**' is not allowed", "column 7: amount ** 2"]),
    ("count & 1", ["operator '&' is not allowed"]),
    ("count << 1", ["operator '<<' is not allowed"]),
    ("~count", ["operator '~' is not allowed"]),
    ("f'{merchant}'", ["f-strings are not allowed"]),
    ("(x := 1)", ["assignment expressions (:=) are not allowed"]),
    ("[c for c in merchant]", ["comprehensions are not allowed"]),
    ("min(*[1, 2])", ["starred arguments are not allowed"]),
    ("round(amount, ndigits=2)", ["keyword arguments are not allowed", "column 14: ndigits=2"]),
    ("(1, 2)", ["only allowed as the literals right of 'in'"]),
    ("{'a': 1}", ["dicts are not allowed"]),
    ("None", ["None is only allowed in 'x is None'"]),
    ("None if big else None", ["both branches are None"]),
    ("coalesce(None, None)", ["coalesce() needs an argument that is not None"]),
    ("qty == None", ["compare with None using 'is None'"]),
    ("qty is 1", ["'is' only tests for None"]),
    ("qty in (1, None)", ["None cannot be matched with 'in'"]),
    ("qty in (1, count)", ["the right side of 'in' must hold literals only", "column 11: count"]),
    ("qty in merchant", ["the right side of 'in' must be a tuple of literals"]),
    ("count in ('a',)", ["string literal cannot match int64 value"]),
    ("big in (1,)", ["int64 literal cannot match bool value"]),
    ("1 < count in (1,)", ["'in' and 'is' cannot be chained"]),
    ("amount + merchant", ["cannot apply '+' to float64 and string", "two numbers or two strings"]),
    ("merchant - 'a'", ["cannot apply '-' to string and string"]),
    ("merchant % 'a'", ["cannot apply '%' to string and string"]),
    ("big + 1", ["cannot apply '+' to bool and int64"]),
    ("count > merchant", ["cannot compare int64 with string", "column 6"]),
    ("0 < count < 'z'", ["cannot compare int64 with string", "column 10"]),
    ("big < flag", ["bools can only be compared with == and !=, not '<'"]),
    ("big and count", ["'and' needs a bool, got int64", "column 8: count"]),
    ("not merchant", ["'not' needs a bool, got string"]),
    ("-merchant", ["unary '-' needs a number, got string"]),
    ("count if amount else 1", ["the condition of 'if' needs a bool, got float64"]),
    ("count if big else merchant", ["branches of 'if' have different types: int64 and string"]),
    ("coalesce(count, merchant)", ["coalesce() arguments have different types"]),
    ("abs(merchant)", ["abs() needs a number, got string"]),
    ("round(merchant)", ["round() needs a number, got string"]),
    ("round(amount, count)", ["round()'s second argument must be an int literal"]),
    ("round(amount, 2.0)", ["round()'s second argument must be an int literal"]),
    ("round(amount, 400)", ["round()'s digits must be between -308 and 308"]),
    ("round(amount, 1, 2)", ["round() takes 1 or 2 arguments, got 3"]),
    ("abs()", ["abs() takes exactly 1 argument, got 0"]),
    ("min(count)", ["min() takes at least 2 arguments, got 1"]),
    ("coalesce(qty)", ["coalesce() takes at least 2 arguments, got 1"]),
    ("lower(count)", ["lower() needs a string, got int64"]),
    ("len(count)", ["len() needs a string, got int64"]),
    ("max(count, merchant)", ["max() needs a number, got string"]),
    ("9223372036854775808", ["outside the int64 range"]),
    ("1e999", ["the float literal is not finite"]),
    ("b'x'", ["bytes literals are not allowed"]),
    ("1j", ["complex literals are not allowed"]),
    ("amount >", ["not a valid expression", "column 8: end of expression"]),
    ("amount = 1", ["not a valid expression"]),
    ("import os", ["not a valid expression"]),
    ("", ["the expression is empty"]),
    ("   ", ["the expression is empty"]),
]


@pytest.mark.parametrize(("text", "fragments"), REFUSALS)
def test_refusals_name_the_expression_and_the_problem(text: str, fragments: list[str]) -> None:
    message = refused(text)
    assert message.startswith(f"view 'v': column 'c': {text!r}: ")
    for fragment in fragments:
        assert fragment in message


def test_positions_count_characters_and_leading_blanks() -> None:
    assert "(at column 15: 'x')" in refused("  len('é') in ('x',)")  # not UTF-8 bytes
    assert "(at column 10: 'x')" in refused("  qty in ('x',)")
    assert "(at line 2, column 2: merchnt)" in refused("(amount +\n  merchnt)")


def test_nesting_is_limited_and_the_deepest_allowed_expressions_render() -> None:
    for template in ("({} + fee)", "abs({})", "({} * 2)", "round({}, 2)", "coalesce(fee, {})"):
        text = "fee"
        for _ in range(31):
            text = template.format(text)
        expression = compiled(text)
        assert expression.evaluate({"fee": 1.0}) is not None
        assert expression.evaluate({"fee": None}) is None
        assert "nested too deeply" in refused(template.format(text))
    text = "flag"
    for _ in range(31):
        text = f"(not {text})"
    assert compiled(text).evaluate({"flag": None}) is None


# --- Rendering ------------------------------------------------------------------------------------

CODE_OF = {"amount": "f1", "big": "f2", "fee": "f3", "count": "f4", "qty": "f5", "flag": "f6"}


def test_rendering_is_plain_where_types_allow() -> None:
    assert compiled("amount >= 100.0").render(CODE_OF) == "(f1 >= 100.0)"
    assert compiled("not big").render(CODE_OF) == "(not f2)"
    assert compiled("amount / 2 > 3").render(CODE_OF) == "((f1 / 2) > 3)"
    assert compiled("big and amount > 1").render(CODE_OF) == "(f2 and (f1 > 1))"
    assert compiled("qty is None").render(CODE_OF) == "(f5 is None)"
    assert compiled("count in (1, 2)").render(CODE_OF) == "(f4 in {1, 2})"
    assert compiled("-amount").render(CODE_OF) == "(-f1)"
    assert compiled("fee > 1").render(CODE_OF) == "(None if f3 is None else (f3 > 1))"
    # an overflow test once, at the end of a float chain
    assert compiled("amount * 100 + 1").render(CODE_OF).count("!= 0.0") == 1


def test_rendering_uses_the_given_code_and_temporaries() -> None:
    expression = compiled("round(fee * 100) + qty")
    code = expression.render({"fee": "row['fee']", "qty": "row['qty']"}, temp="_t")
    assert "_t0" in code
    assert "_x0" not in code
    for fee, qty, expected in [(1.234, 1, 124), (None, 1, None), (1e300, 1, None)]:
        assert eval(code, {**RUNTIME, "row": {"fee": fee, "qty": qty}}) == expected
    # two renderings with different temporaries in one function
    other = compiled("coalesce(fee * 2, 0.0)").render({"fee": "a"}, temp="_y")
    source = f"def both(a, b):\n    return {expression.render({'fee': 'a', 'qty': 'b'})}, {other}"
    namespace = dict(RUNTIME)
    exec(source, namespace)
    assert namespace["both"](2.0, 3) == (203, 4.0)
    assert all(name.startswith("_x_") for name in RUNTIME)


def test_function_takes_values_positionally_and_is_cached() -> None:
    expression = compiled("count - qty")
    function = expression.function(["qty", "amount", "count"])
    assert function(1, 0.0, 5) == 4
    assert expression.function(["qty", "amount", "count"]) is function
    assert expression.evaluate({"count": 5, "qty": None, "other": 1}) is None
    with pytest.raises(ValueError, match="reads count, not in names"):
        expression.function(["qty"])
    with pytest.raises(ValueError, match="repeat"):
        expression.function(["qty", "count", "qty"])


def test_render_refuses_missing_code() -> None:
    with pytest.raises(ValueError, match="no code for name 'count'"):
        compiled("count + 1").render({})


# --- Property: the rendered code agrees with a reference evaluator --------------------------------


@dataclass(frozen=True)
class Gen:
    """A generated expression: its text, its type, and a tree for the reference evaluator."""

    text: str
    type: str
    kind: str
    args: tuple[Any, ...] = ()


ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def fit(type_: str, value: Any) -> Any:
    """The documented result rules: int64 in range, float64 finite (ints widened), else null."""
    if value is None:
        return None
    if type_ == "int64":
        return value if INT64_MIN <= value <= INT64_MAX else None
    if type_ == "float64":
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def reference(g: Gen, env: dict[str, Any]) -> Any:
    """The documented semantics, evaluated directly: a null at every step where one arises."""
    kind, args = g.kind, g.args
    if kind == "name":
        return env[args[0]]
    if kind == "lit":
        return fit(g.type, args[0])
    if kind == "isnone":
        return (reference(args[0], env) is None) != args[1]
    if kind in ("and", "or"):
        values = [reference(a, env) for a in args]
        dominant = kind == "or"
        if dominant in values:
            return dominant
        return None if None in values else not dominant
    if kind == "if":
        body, test, orelse = args
        return fit(g.type, reference(body if reference(test, env) is True else orelse, env))
    if kind == "coalesce":
        for a in args:
            value = reference(a, env)
            if value is not None:
                return fit(g.type, value)
        return None
    if kind == "round":
        value = reference(args[0], env)
        if value is None:
            return None
        digits = args[1]
        if digits is None:
            return fit("int64", round(value))
        try:
            return fit("float64", round(value, digits))
        except OverflowError:
            return None
    operands = [reference(a, env) for a in (args[1:] if kind in ("arith", "cmp", "in") else args)]
    if None in operands:
        return None
    if kind == "neg":
        return fit(g.type, -operands[0])
    if kind == "not":
        return not operands[0]
    if kind == "arith":
        op = args[0]
        a, b = operands
        if op in ("/", "//", "%") and b == 0:
            return None
        return fit(g.type, ARITH[op](a, b))
    if kind == "cmp":
        ops = args[0]
        return all(COMPARE[op](x, y) for op, x, y in zip(ops, operands, operands[1:], strict=False))
    if kind == "in":
        return (operands[0] in args[0][1]) != args[0][0]
    if kind in ("min", "max"):
        widened = [fit(g.type, v) for v in operands]
        return min(widened) if kind == "min" else max(widened)
    if kind == "abs":
        return fit(g.type, abs(operands[0]))
    if kind == "lower":
        return operands[0].lower()
    if kind == "upper":
        return operands[0].upper()
    if kind == "len":
        return len(operands[0])
    raise AssertionError(kind)


NUMBERS = ("int64", "float64")
TYPES = ("int64", "float64", "string", "bool")
INTS = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, 1, -1, 2, 3, 10, INT64_MAX, INT64_MIN, INT64_MAX - 1, 2**53 + 1]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 1e308, -1e308, 1e-308, 5e-324, 2.0**63]),
)
STRINGS = st.one_of(st.text(max_size=5), st.sampled_from(["", "a", "B", "ß", "é", "日本", "ǅ"]))
LITERALS = {"int64": INTS, "float64": FLOATS, "string": STRINGS, "bool": st.booleans()}
NAMES_OF = {t: [n for n, declared in NAMES.items() if declared.type == t] for t in TYPES}
DIGITS = [-308, -300, -20, -2, -1, 0, 1, 2, 5, 308]
# What an expression of each type can be, besides a name or a literal.
KINDS = {
    "int64": ["arith", "neg", "abs", "minmax", "round", "len", "if", "coalesce"],
    "float64": ["arith", "neg", "abs", "minmax", "round", "if", "coalesce"],
    "string": ["concat", "case", "if", "coalesce"],
    "bool": ["compare", "isnone", "in", "logic", "not", "if", "coalesce"],
}


def none_of(type_: str) -> Gen:
    return Gen("None", type_, "lit", (None,))


@st.composite
def leaves(draw: st.DrawFn, type_: str) -> Gen:
    if draw(st.booleans()):
        name = draw(st.sampled_from(NAMES_OF[type_]))
        return Gen(name, type_, "name", (name,))
    value = draw(LITERALS[type_])
    return Gen(f"({value!r})", type_, "lit", (value,))


@st.composite
def expressions(draw: st.DrawFn, type_: str, depth: int) -> Gen:
    """A random well-typed expression of ``type_``, at most ``depth`` operators deep."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(leaves(type_))

    def sub(t: str) -> Gen:
        return draw(expressions(t, depth - 1))

    def number() -> Gen:
        return sub(draw(st.sampled_from(NUMBERS)))

    def operands(n: int) -> list[Gen]:
        """``n`` operands for a result of ``type_``: a float64 takes ints too, but one float."""
        if type_ != "float64":
            return [sub(type_) for _ in range(n)]
        types = [draw(st.sampled_from(NUMBERS)) for _ in range(n)]
        types[draw(st.integers(0, n - 1))] = "float64"
        return [sub(t) for t in types]

    def call(name: str, args: list[Gen], kind: str | None = None) -> Gen:
        text = f"{name}({', '.join(a.text for a in args)})"
        return Gen(text, type_, kind or name, tuple(args))

    kind = draw(st.sampled_from(KINDS[type_]))
    if kind == "arith":
        ops = ["+", "-", "*", "//", "%"] + (["/"] if type_ == "float64" else [])
        op = draw(st.sampled_from(ops))
        if op == "/" and draw(st.booleans()):
            a, b = sub("int64"), sub("int64")
        else:
            a, b = operands(2)
        return Gen(f"({a.text} {op} {b.text})", type_, "arith", (op, a, b))
    if kind == "concat":
        a, b = operands(2)
        return Gen(f"({a.text} + {b.text})", type_, "arith", ("+", a, b))
    if kind == "neg":
        a = sub(type_)
        return Gen(f"(-{a.text})", type_, "neg", (a,))
    if kind == "abs":
        return call("abs", [sub(type_)])
    if kind == "minmax":
        return call(draw(st.sampled_from(["min", "max"])), operands(draw(st.integers(2, 3))))
    if kind == "round":
        a = number()
        if type_ == "int64":
            return Gen(f"round({a.text})", type_, "round", (a, None))
        digits = draw(st.sampled_from(DIGITS))
        return Gen(f"round({a.text}, {digits})", type_, "round", (a, digits))
    if kind == "len":
        return call("len", [sub("string")])
    if kind == "case":
        return call(draw(st.sampled_from(["lower", "upper"])), [sub("string")])
    if kind == "if":
        body, orelse = operands(2)
        test = sub("bool")
        if draw(st.integers(0, 3)) == 0:  # a None branch, the other one typed
            if orelse.type == type_:
                body = none_of(type_)
            elif body.type == type_:
                orelse = none_of(type_)
        text = f"({body.text} if {test.text} else {orelse.text})"
        return Gen(text, type_, "if", (body, test, orelse))
    if kind == "coalesce":
        args = operands(draw(st.integers(2, 3)))
        if draw(st.booleans()):
            args.insert(draw(st.integers(0, len(args))), none_of(type_))
        return call("coalesce", args)
    if kind == "compare":
        family = draw(st.sampled_from(["numbers", "strings", "bools"]))
        if family == "numbers":
            xs = [number() for _ in range(draw(st.integers(2, 3)))]
            ops = [draw(st.sampled_from(list(COMPARE))) for _ in xs[1:]]
        else:
            xs = [sub("string" if family == "strings" else "bool") for _ in range(2)]
            ops = [draw(st.sampled_from(list(COMPARE) if family == "strings" else ["==", "!="]))]
        text = xs[0].text + "".join(f" {op} {x.text}" for op, x in zip(ops, xs[1:], strict=True))
        return Gen(f"({text})", type_, "cmp", (tuple(ops), *xs))
    if kind == "isnone":
        a, negate = sub(draw(st.sampled_from(TYPES))), draw(st.booleans())
        return Gen(f"({a.text} is {'not ' if negate else ''}None)", type_, "isnone", (a, negate))
    if kind == "in":
        t = draw(st.sampled_from(TYPES))
        a, negate = sub(t), draw(st.booleans())
        kinds = NUMBERS if t in NUMBERS else (t,)
        values = [
            draw(LITERALS[draw(st.sampled_from(kinds))]) for _ in range(draw(st.integers(0, 3)))
        ]
        literals = "".join(f"{v!r}, " for v in values)
        text = f"({a.text} {'not in' if negate else 'in'} ({literals}))"
        return Gen(text, type_, "in", ((negate, tuple(values)), a))
    if kind == "logic":
        op = draw(st.sampled_from(["and", "or"]))
        args = [sub("bool") for _ in range(draw(st.integers(2, 3)))]
        return Gen("(" + f" {op} ".join(a.text for a in args) + ")", type_, op, tuple(args))
    assert kind == "not"
    a = sub("bool")
    return Gen(f"(not {a.text})", type_, "not", (a,))


def value_of(type_: str, nullable: bool) -> st.SearchStrategy[Any]:
    values = LITERALS[type_]
    return st.one_of(st.none(), values) if nullable else values


ENVIRONMENTS = st.fixed_dictionaries({n: value_of(t.type, t.nullable) for n, t in NAMES.items()})
PYTHON_TYPES = {"int64": int, "float64": float, "string": str, "bool": bool}
ORDER = list(NAMES)


@settings(max_examples=600, deadline=None)
@given(
    generated=st.sampled_from(TYPES).flatmap(lambda t: expressions(t, 3)),
    env=ENVIRONMENTS,
)
def test_rendered_code_agrees_with_the_reference_and_never_raises(
    generated: Gen, env: dict[str, Any]
) -> None:
    expression = compiled(generated.text)
    assert expression.type == generated.type
    expected = reference(generated, env)
    got = expression.function(ORDER)(*[env[n] for n in ORDER])
    assert same(got, expected), (expression.render({n: n for n in NAMES}), got, expected)
    # names read from a dict (temporaries needed), other temporaries
    code = expression.render({n: f"row[{n!r}]" for n in NAMES}, temp="_t")
    assert same(eval(code, {**RUNTIME, "row": env}), expected)
    if got is not None:
        assert type(got) is PYTHON_TYPES[expression.type]
    if not expression.nullable:
        assert got is not None
