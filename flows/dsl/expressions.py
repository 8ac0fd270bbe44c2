"""Expressions: computed columns, filters and derived features, as data.

An expression is a string in a small, safe subset of Python's expression syntax. It is parsed
with :mod:`ast`, type-checked against the names it may read, and compiled to Python source that
the engine inlines into its generated per-event code::

    from freshet.dsl.expressions import NameType, compile_expression

    big = compile_expression(
        "amount >= 100.0", {"amount": NameType("float64")}, what="view 'card': column 'big'"
    )
    big.type, big.nullable, big.names    # ('bool', False, ('amount',))
    big.render({"amount": "f1"})         # '(f1 >= 100.0)'
    big.evaluate({"amount": 250.0})      # True

Nothing in an expression can reach Python itself: no attribute access, no subscripts, no calls
but the functions below. Evaluation never raises for inputs of the declared types (``int``,
``float``, ``str``, ``bool``, or ``None`` for a nullable name); where Python would raise or
produce an unusable number, the value is null (``None``).

Language
--------

========================  =========================================================================
Construct                 Rule
========================  =========================================================================
names                     the fields or columns the caller declares, each with a type and whether
                          it is nullable. With ``dotted=True`` a dotted name ``a.b`` (one plain
                          name, one attribute) reads the declared name ``"a.b"``.
literals                  ``int`` (int64 range), finite ``float``, ``str``, ``True``/``False``,
                          ``None`` (only in ``x is None``, as a branch of ``… if … else …`` and as
                          an argument of ``coalesce``: a bare ``None`` has no type)
``+ - * / // %``          numbers: int op int is int64 (``/`` gives float64), mixed is float64;
                          ``//`` floors and ``%`` takes the divisor's sign, as in Python.
                          ``+`` also joins two strings
``-x``, ``+x``            numbers
``== != < <= > >=``       both sides numbers (int and float mix, compared exactly), or both
                          strings (by code point), or both bools (``==``/``!=`` only). Chains
                          such as ``0 < x <= 10`` are one comparison
``and or not``            bools
``x in (lit, …)``         also ``not in``; the right side is a tuple, list or set of literals of
                          the left side's type (numbers mix)
``x is None``             also ``is not None``; any type; never null
``a if c else b``         ``c`` a bool; branches of one type (int and float give float64; a
                          ``None`` branch makes the other branch's type nullable)
functions                 ``abs(x)``; ``round(x)`` (int64, Python's round-half-even);
                          ``round(x, n)`` (float64; ``n`` an int literal in -308..308);
                          ``min(a, b, …)``, ``max(a, b, …)`` (numbers, 2+ arguments; float64 if
                          any is); ``lower(s)``, ``upper(s)`` (string); ``len(s)`` (int64, code
                          points); ``coalesce(a, b, …)`` (the first argument that is not null;
                          2+ arguments of one type, int and float give float64)
========================  =========================================================================

Everything else is refused with :class:`ExpressionError`: attribute access (but dotted names),
subscripts, other calls, keyword arguments, ``lambda``, comprehensions, ``**``, bit operators,
f-strings, ``:=``, starred arguments, ``is`` with anything but ``None``, and expressions nested
more than 32 levels deep. The message names the expression and points at the bad part::

    column 'x': "amount > 'x'": cannot compare float64 with string (at column 7: amount > 'x')

Columns count characters from 0. As in Python, an expression spans lines only inside
parentheses.

Nulls
-----
As in SQL:

- Arithmetic, comparisons (a whole chain) and functions with a null operand give null, except
  ``is None``/``is not None`` (true or false), ``coalesce`` and the logic below.
- ``and``, ``or``, ``not`` use three-valued logic: ``False and null`` is ``False``, ``True or
  null`` is ``True``, ``not null`` is null, and otherwise null if an operand is null.
- ``a if c else b`` takes the ``else`` branch when ``c`` is null.
- ``x in (…)`` and ``x not in (…)`` are null when ``x`` is null.
- ``/``, ``//`` and ``%`` by zero give null.
- An int64 result outside -2**63 .. 2**63-1 gives null, at every step (``-x``, ``abs``,
  ``+ - * //``); so does ``round(x)`` of a float outside that range.
- A float result that is not finite (an overflow to infinity, or NaN) gives null, at every step:
  ``amount * 1e308 * 10 > 5`` is null, never true. Float inputs are expected to be finite; a NaN
  or infinite input never makes evaluation raise, but passes unchanged through what cannot create
  one (``-``, ``abs``, ``min``, ``max``, branches, ``coalesce``; comparisons treat it as Python
  does).

An expression's ``nullable`` is true whenever its value can be null (and may be true when it
cannot):

- always for arithmetic on numbers (``+ - * / // %``: overflow, non-finite floats, division by
  zero), for ``-x`` and ``abs(x)`` of an int, ``round(x)`` of a float and ``round(x, n)`` of a
  float with ``n < 0``;
- never for ``x is None`` and ``x is not None``;
- for ``coalesce``, when every argument is nullable;
- for everything else (names, ``+`` of strings, ``-`` and ``abs`` of a float, comparisons, ``in``,
  logic, conditionals, the other functions), when an operand is nullable (a branch, for a
  conditional).

Rendering
---------
:meth:`Expression.render` returns one Python expression (no statements) in which each name is
replaced by the caller's code for it (``"f3"``, ``"fields[3]"``, ``"row['a']"``: read-only,
cheap, readable more than once). Temporaries are walrus targets named ``{temp}0``, ``{temp}1``, …;
helpers come from :data:`RUNTIME`; builtins used are ``abs``, ``round``, ``min``, ``max``,
``len``, ``float``. Null and range checks appear only where the types require them: a float
``amount >= 100.0`` renders to ``(f1 >= 100.0)``.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "FUNCTIONS",
    "RUNTIME",
    "ExprType",
    "Expression",
    "ExpressionError",
    "NameType",
    "compile_expression",
]

ExprType: TypeAlias = Literal["int64", "float64", "string", "bool"]

FUNCTIONS: tuple[str, ...] = ("abs", "round", "min", "max", "lower", "upper", "len", "coalesce")

_NUMBERS = ("int64", "float64")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# round(x) of a float is an int64 exactly when -2**63 <= x < 2**63 (NaN and infinities fail too).
_ROUND_LOW = repr(float(_INT64_MIN))
_ROUND_HIGH = repr(float(2**63))
_MAX_DEPTH = 32  # rendered code nests a few parentheses per level; Python's limit is 200
_MAX_DIGITS = 308  # round(5, -10**18) would compute 10**(10**18)


class ExpressionError(ValueError):
    """An expression outside the language, or one whose types do not fit; the message names the
    expression and points at the offending part."""


@dataclass(frozen=True, slots=True)
class NameType:
    """The type of a name an expression may read, and whether its value may be ``None``."""

    type: ExprType
    nullable: bool = False


# --- The checked tree: what the type checker hands the renderer ---------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    type: ExprType
    nullable: bool


@dataclass(frozen=True, slots=True)
class _Name(_Node):
    name: str


@dataclass(frozen=True, slots=True)
class _Const(_Node):
    value: Any  # None only as a typed null (a ``None`` branch of ``if``)


@dataclass(frozen=True, slots=True)
class _Neg(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Arith(_Node):
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _Compare(_Node):
    ops: tuple[str, ...]
    operands: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _IsNone(_Node):
    operand: _Node
    negate: bool


@dataclass(frozen=True, slots=True)
class _In(_Node):
    operand: _Node
    values: tuple[Any, ...]
    negate: bool


@dataclass(frozen=True, slots=True)
class _Logic(_Node):
    op: Literal["and", "or"]
    operands: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _IfElse(_Node):
    body: _Node
    test: _Node
    orelse: _Node


@dataclass(frozen=True, slots=True)
class _ToFloat(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Call(_Node):
    func: str
    args: tuple[_Node, ...]
    digits: int | None = None  # round(x, digits)


# --- Parsing and type checking -------------------------------------------------------------------

_ARITHMETIC: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
}
_REFUSED_OPERATORS: dict[type[ast.operator], str] = {
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}
_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_REFUSED: dict[type[ast.AST], str] = {
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Tuple: "tuples, lists and sets are only allowed as the literals right of 'in'",
    ast.List: "tuples, lists and sets are only allowed as the literals right of 'in'",
    ast.Set: "tuples, lists and sets are only allowed as the literals right of 'in'",
    ast.Dict: "dicts are not allowed",
}
_ARITY: dict[str, tuple[int, int | None]] = {
    "round": (1, 2),
    "min": (2, None),
    "max": (2, None),
    "coalesce": (2, None),
}  # (fewest, most) arguments; the others take one
_NONE_USES = "None is only allowed in 'x is None', as a branch of 'if … else' or in coalesce()"
_NO_VALUE = object()  # _Checker.literal()'s answer for a node that is not a literal


def _literal_type(value: object) -> ExprType | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


def _unify(a: ExprType, b: ExprType) -> ExprType | None:
    if a == b:
        return a
    if a in _NUMBERS and b in _NUMBERS:
        return "float64"
    return None


def _to_float(node: _Node) -> _Node:
    if node.type != "int64":
        return node
    if isinstance(node, _Const):
        return _Const("float64", node.nullable, None if node.value is None else float(node.value))
    return _ToFloat("float64", node.nullable, node)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


class _Checker:
    """Turns the text into a checked tree, or raises ExpressionError pointing into the text."""

    def __init__(
        self, text: str, names: Mapping[str, NameType], *, what: str, dotted: bool
    ) -> None:
        self.text = text
        self.names = names
        self.what = what
        self.dotted = dotted
        self.used: dict[str, None] = {}  # an ordered set
        self.depth = 0
        # Python refuses an expression indented by leading blanks: parse it without them.
        self.source = text.lstrip()
        self.shift = len(text) - len(self.source)
        self.lines: list[tuple[int, str]] = []  # (start index in source, line)
        start = 0
        for match in re.finditer(r"[^\r\n]*(?:\r\n|\r|\n|$)", self.source):
            self.lines.append((start, match.group()))
            start = match.end()
            if not match.group():
                break

    # Messages ------------------------------------------------------------------------------------

    def message(self, problem: str, index: int, snippet: str) -> str:
        before = self.text[:index]
        column = index - (before.rfind("\n") + 1)
        where = f"column {column}"
        if "\n" in self.text:
            where = f"line {before.count(chr(10)) + 1}, {where}"
        prefix = f"{self.what}: " if self.what else ""
        return f"{prefix}{self.text!r}: {problem} (at {where}: {snippet})"

    def index(self, lineno: int, col_offset: int) -> int:
        """The index in the text of an ast position (line from 1, UTF-8 byte column)."""
        start, line = self.lines[lineno - 1]
        return self.shift + start + len(line.encode()[:col_offset].decode(errors="ignore"))

    def error(
        self, node: ast.expr | ast.keyword, problem: str, *, at: int | None = None
    ) -> ExpressionError:
        start = self.index(node.lineno, node.col_offset)
        end_line, end_col = node.end_lineno, node.end_col_offset
        end = start if end_line is None or end_col is None else self.index(end_line, end_col)
        return ExpressionError(
            self.message(problem, start if at is None else at, self.text[start:end])
        )

    def operator_at(self, left: ast.expr, right: ast.expr) -> int:
        """The index of the operator between two operands (after closing parentheses)."""
        assert left.end_lineno is not None
        assert left.end_col_offset is not None
        i = self.index(left.end_lineno, left.end_col_offset)
        stop = self.index(right.lineno, right.col_offset)
        while i < stop and (self.text[i].isspace() or self.text[i] == ")"):
            i += 1
        return i

    def known(self) -> str:
        return ", ".join(sorted(self.names)) or "(none)"

    # Entry ---------------------------------------------------------------------------------------

    def parse(self) -> _Node:
        if not self.source.strip():
            problem = "the expression is empty"
            raise ExpressionError(self.message(problem, len(self.text), "end of expression"))
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as error:
            raise ExpressionError(self.syntax_message(error)) from error
        except (ValueError, RecursionError, MemoryError) as error:  # null bytes; absurd nesting
            problem = f"cannot be parsed ({error})"
            raise ExpressionError(self.message(problem, 0, self.text)) from error
        try:
            return self.check(tree.body)
        except RecursionError as error:  # a literal signed a thousand times
            problem = "the expression is nested too deeply"
            raise ExpressionError(self.message(problem, 0, self.text)) from error

    def syntax_message(self, error: SyntaxError) -> str:
        lineno = min(max(error.lineno or 1, 1), len(self.lines))
        start, line = self.lines[lineno - 1]
        line = line.rstrip("\r\n")
        offset = error.offset if error.offset and 0 < error.offset <= len(line) else len(line) + 1
        index = self.shift + start + offset - 1
        snippet = line[offset - 1 :] or "end of expression"
        return self.message(f"not a valid expression: {error.msg}", index, snippet)

    # The checker, node by node -----------------------------------------------------------------

    def check(self, node: ast.expr) -> _Node:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise self.error(
                    node, f"the expression is nested too deeply (at most {_MAX_DEPTH})"
                )
            return self.check_node(node)
        finally:
            self.depth -= 1

    def check_node(self, node: ast.expr) -> _Node:
        match node:
            case ast.Constant() | ast.UnaryOp(op=ast.USub() | ast.UAdd()) if (
                value := self.literal(node)
            ) is not _NO_VALUE:
                return self.constant(node, value)
            case ast.Name():
                return self.name(node, node.id)
            case ast.Attribute():
                return self.attribute(node)
            case ast.UnaryOp():
                return self.unary(node)
            case ast.BinOp():
                return self.arithmetic(node)
            case ast.BoolOp():
                return self.logic(node)
            case ast.Compare():
                return self.compare(node)
            case ast.IfExp():
                return self.if_else(node)
            case ast.Call():
                return self.call(node)
        raise self.error(node, _REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))

    def literal(self, node: ast.expr) -> object:
        """The value of a literal (with its signs folded), or _NO_VALUE.

        A sign is folded only into an int64: -9223372036854775808 is a literal, while
        -(-9223372036854775808) is a negation that overflows (null), as it is for a name."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.literal(node.operand)
            if isinstance(value, int | float) and not isinstance(value, bool):
                signed = -value if isinstance(node.op, ast.USub) else value
                if not isinstance(signed, int) or _INT64_MIN <= signed <= _INT64_MAX:
                    return signed
        return _NO_VALUE

    def constant(self, node: ast.expr, value: object) -> _Node:
        if value is None:
            raise self.error(node, _NONE_USES)
        kind = _literal_type(value)
        if kind is None:
            raise self.error(node, f"{type(value).__name__} literals are not allowed")
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise self.error(node, "the int literal is outside the int64 range")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, "the float literal is not finite")
        return _Const(kind, False, value)

    def name(self, node: ast.expr, name: str) -> _Node:
        declared = self.names.get(name)
        if declared is None:
            raise self.error(node, f"unknown name {name!r}; known: {self.known()}")
        self.used[name] = None
        return _Name(declared.type, declared.nullable, name)

    def attribute(self, node: ast.Attribute) -> _Node:
        if self.dotted and isinstance(node.value, ast.Name):
            dotted = f"{node.value.id}.{node.attr}"
            if dotted in self.names:
                return self.name(node, dotted)
            problem = f"attribute access is not allowed, and {dotted!r} is not a known name"
            raise self.error(node, f"{problem}; known: {self.known()}")
        raise self.error(node, "attribute access is not allowed")

    def numeric(self, node: ast.expr, what: str) -> _Node:
        checked = self.check(node)
        if checked.type not in _NUMBERS:
            raise self.error(node, f"{what} needs a number, got {checked.type}")
        return checked

    def boolean(self, node: ast.expr, what: str) -> _Node:
        checked = self.check(node)
        if checked.type != "bool":
            raise self.error(node, f"{what} needs a bool, got {checked.type}")
        return checked

    def unary(self, node: ast.UnaryOp) -> _Node:
        if isinstance(node.op, ast.Not):
            operand = self.boolean(node.operand, "'not'")
            return _Not("bool", operand.nullable, operand)
        if isinstance(node.op, ast.Invert):
            raise self.error(node, "operator '~' is not allowed")
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        operand = self.numeric(node.operand, f"unary '{sign}'")
        if sign == "+":
            return operand
        # -(-2**63) overflows int64; a float's negation is finite when the float is.
        nullable = operand.nullable or operand.type == "int64"
        return _Neg(operand.type, nullable, operand)

    def arithmetic(self, node: ast.BinOp) -> _Node:
        refused = _REFUSED_OPERATORS.get(type(node.op))
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            problem = f"operator {refused or type(node.op).__name__!r} is not allowed"
            raise self.error(node, problem, at=self.operator_at(node.left, node.right))
        left = self.check(node.left)
        right = self.check(node.right)
        if op == "+" and left.type == right.type == "string":
            return _Arith("string", left.nullable or right.nullable, op, left, right)
        if left.type in _NUMBERS and right.type in _NUMBERS:
            floats = "float64" in (left.type, right.type) or op == "/"
            # Always nullable: int64 overflow, non-finite floats, division by zero.
            return _Arith("float64" if floats else "int64", True, op, left, right)
        needs = "two numbers or two strings" if op == "+" else "numbers"
        problem = f"cannot apply '{op}' to {left.type} and {right.type} ('{op}' needs {needs})"
        raise self.error(node, problem, at=self.operator_at(node.left, node.right))

    def logic(self, node: ast.BoolOp) -> _Node:
        op: Literal["and", "or"] = "and" if isinstance(node.op, ast.And) else "or"
        operands = tuple(self.boolean(value, f"'{op}'") for value in node.values)
        return _Logic("bool", any(o.nullable for o in operands), op, operands)

    def compare(self, node: ast.Compare) -> _Node:
        if any(isinstance(op, ast.Is | ast.IsNot | ast.In | ast.NotIn) for op in node.ops):
            if len(node.ops) > 1:
                raise self.error(node, "'in' and 'is' cannot be chained with other comparisons")
            if isinstance(node.ops[0], ast.Is | ast.IsNot):
                return self.is_none(node)
            return self.membership(node)
        operands = [node.left, *node.comparators]
        for operand in operands:
            if _is_none(operand):
                raise self.error(operand, "compare with None using 'is None' or 'is not None'")
        checked = [self.check(operand) for operand in operands]
        ops = tuple(_COMPARISONS[type(op)] for op in node.ops)
        for i, op in enumerate(ops):
            a, b = checked[i].type, checked[i + 1].type
            if (a in _NUMBERS and b in _NUMBERS) or a == b == "string":
                continue
            if a == b == "bool":
                if op in ("==", "!="):
                    continue
                problem = f"bools can only be compared with == and !=, not {op!r}"
            else:
                problem = f"cannot compare {a} with {b}"
            raise self.error(node, problem, at=self.operator_at(operands[i], operands[i + 1]))
        return _Compare("bool", any(c.nullable for c in checked), ops, tuple(checked))

    def is_none(self, node: ast.Compare) -> _Node:
        if not _is_none(node.comparators[0]):
            problem = "'is' only tests for None ('x is None'); compare values with '=='"
            raise self.error(node, problem, at=self.operator_at(node.left, node.comparators[0]))
        operand = self.check(node.left)
        return _IsNone("bool", False, operand, isinstance(node.ops[0], ast.IsNot))

    def membership(self, node: ast.Compare) -> _Node:
        operand = self.check(node.left)
        right = node.comparators[0]
        if not isinstance(right, ast.Tuple | ast.List | ast.Set):
            problem = "the right side of 'in' must be a tuple of literals, like (1, 2, 3)"
            raise self.error(right, problem)
        values: dict[object, None] = {}
        for element in right.elts:
            value = self.literal(element)
            if value is _NO_VALUE:
                raise self.error(element, "the right side of 'in' must hold literals only")
            if value is None:
                raise self.error(element, "None cannot be matched with 'in': use 'x is None'")
            self.constant(element, value)  # the literal rules: int64 range, finite
            kind = _literal_type(value)
            if kind != operand.type and not (kind in _NUMBERS and operand.type in _NUMBERS):
                raise self.error(element, f"{kind} literal cannot match {operand.type} value")
            values[value] = None
        negate = isinstance(node.ops[0], ast.NotIn)
        return _In("bool", operand.nullable, operand, tuple(values), negate)

    def if_else(self, node: ast.IfExp) -> _Node:
        body = None if _is_none(node.body) else self.check(node.body)  # the order of the text
        test = self.boolean(node.test, "the condition of 'if'")
        orelse = None if _is_none(node.orelse) else self.check(node.orelse)
        if body is None:  # a None branch is a null of the other branch's type
            if orelse is None:
                raise self.error(node, "both branches are None: the expression has no type")
            body = _Const(orelse.type, True, None)
        elif orelse is None:
            orelse = _Const(body.type, True, None)
        kind = _unify(body.type, orelse.type)
        if kind is None:
            problem = f"the branches of 'if' have different types: {body.type} and {orelse.type}"
            raise self.error(node, problem)
        if kind == "float64":
            body, orelse = _to_float(body), _to_float(orelse)
        return _IfElse(kind, body.nullable or orelse.nullable, body, test, orelse)

    def call(self, node: ast.Call) -> _Node:
        func = node.func
        if isinstance(func, ast.Attribute):
            raise self.error(func, "attribute access is not allowed (use lower(s), not s.lower())")
        functions = ", ".join(FUNCTIONS)
        if not isinstance(func, ast.Name):
            self.check(func)  # refuses a lambda, a subscript, ... by name
            raise self.error(node, f"only these functions can be called: {functions}")
        if func.id not in FUNCTIONS:
            raise self.error(
                func, f"function {func.id!r} is not allowed; the functions are: {functions}"
            )
        if node.keywords:
            raise self.error(node.keywords[0], "keyword arguments are not allowed")
        for given in node.args:
            if isinstance(given, ast.Starred):
                raise self.error(given, "starred arguments are not allowed")
        name, args = func.id, node.args
        low, high = _ARITY.get(name, (1, 1))
        if len(args) < low or (high is not None and len(args) > high):
            if high is None:
                wanted = f"at least {low} arguments"
            elif high == low:
                wanted = f"exactly {low} argument{'s' if low > 1 else ''}"
            else:
                wanted = f"{low} or {high} arguments"
            raise self.error(node, f"{name}() takes {wanted}, got {len(args)}")
        if name == "coalesce":
            return self.coalesce(node)
        return self.function(name, node)

    def function(self, name: str, node: ast.Call) -> _Node:
        args = node.args
        if name in ("lower", "upper", "len"):
            arg = self.check(args[0])
            if arg.type != "string":
                raise self.error(args[0], f"{name}() needs a string, got {arg.type}")
            kind: ExprType = "int64" if name == "len" else "string"
            return _Call(kind, arg.nullable, name, (arg,))
        if name == "abs":
            arg = self.numeric(args[0], "abs()")
            return _Call(arg.type, arg.nullable or arg.type == "int64", name, (arg,))
        if name == "round":
            arg = self.numeric(args[0], "round()")
            if len(args) == 1:
                return _Call("int64", arg.nullable or arg.type == "float64", name, (arg,))
            digits = self.literal(args[1])
            if not isinstance(digits, int) or isinstance(digits, bool):
                problem = "round()'s second argument must be an int literal (decimal digits)"
                raise self.error(args[1], problem)
            if not -_MAX_DIGITS <= digits <= _MAX_DIGITS:
                problem = f"round()'s digits must be between -{_MAX_DIGITS} and {_MAX_DIGITS}"
                raise self.error(args[1], problem)
            # A float rounded to negative digits can overflow: round(1.7e308, -308).
            nullable = arg.nullable or (arg.type == "float64" and digits < 0)
            return _Call("float64", nullable, name, (arg,), digits)
        checked = tuple(self.numeric(arg, f"{name}()") for arg in args)  # min, max
        kind = "float64" if any(a.type == "float64" for a in checked) else "int64"
        if kind == "float64":
            checked = tuple(_to_float(a) for a in checked)
        return _Call(kind, any(a.nullable for a in checked), name, checked)

    def coalesce(self, node: ast.Call) -> _Node:
        # A None argument changes nothing (coalesce(x, None) is x): leave it out.
        sources = [arg for arg in node.args if not _is_none(arg)]
        if not sources:
            raise self.error(node, "coalesce() needs an argument that is not None")
        args = [self.check(arg) for arg in sources]
        kind = args[0].type
        for arg, source in zip(args[1:], sources[1:], strict=True):
            unified = _unify(kind, arg.type)
            if unified is None:
                problem = f"coalesce() arguments have different types: {kind} and {arg.type}"
                raise self.error(source, problem)
            kind = unified
        if kind == "float64":
            args = [_to_float(a) for a in args]
        return _Call(kind, all(a.nullable for a in args), "coalesce", tuple(args))


# --- Rendering -----------------------------------------------------------------------------------


def _literal(value: object) -> str:
    if isinstance(value, int | float) and math.copysign(1.0, value) < 0:
        return f"({value!r})"  # -1 is an operator and a literal: keep it whole
    return repr(value)


def _identifier(code: str) -> bool:
    return code.isidentifier() and not keyword.iskeyword(code)


class _Use:
    """An operand's code read more than once: the first read binds a temporary."""

    __slots__ = ("_first", "_later", "_read")

    def __init__(self, first: str, later: str) -> None:
        self._first, self._later, self._read = first, later, False

    def read(self) -> str:
        if self._read:
            return self._later
        self._read = True
        return self._first


class _Renderer:
    """Python source for a checked tree.

    ``loose=True`` lets a float node skip its finiteness check, returning infinity or NaN where
    it would return None: only for operands of ``+ - *``, a ``/``'s dividend, and ``-``, ``abs``,
    ``round`` and ``if`` branches under them, whose results stay non-finite (inf * 0 is NaN,
    inf - inf is NaN, ...) until a checked node turns them into None.

    :meth:`nullable` says whether the code rendered for a node can give None: tighter than the
    node's declared ``nullable`` (``amount / 2`` is declared nullable, its code never gives None),
    so the code of its parent needs no null test. It mirrors the rendering's decisions.
    """

    def __init__(self, code_of: Mapping[str, str], temp: str) -> None:
        self.code_of = code_of
        self.temp = temp
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"{self.temp}{self.count - 1}"

    # Which code can give None ------------------------------------------------------------------

    def nullable(self, node: _Node, loose: bool = False) -> bool:
        match node:
            case _Const():
                return node.value is None
            case _Neg():
                return node.type == "int64" or self.nullable(node.operand, loose)
            case _Arith():
                if node.type == "string":
                    return self.nullable(node.left) or self.nullable(node.right)
                plan = _plan(node, loose)
                return (
                    plan.zero_test
                    or plan.check is not None
                    or self.nullable(node.left, plan.left_loose)
                    or self.nullable(node.right, plan.right_loose)
                )
            case _Compare() | _Logic():
                return any(self.nullable(o) for o in node.operands)
            case _In() | _Not() | _ToFloat():
                return self.nullable(node.operand)
            case _IsNone():
                return False
            case _IfElse():
                return self.nullable(node.body, loose) or self.nullable(node.orelse, loose)
            case _Call():
                return self.call_nullable(node, loose)
        return node.nullable  # a name

    def call_nullable(self, node: _Call, loose: bool) -> bool:
        args = node.args
        if node.func == "coalesce":
            return all(self.nullable(a) for a in args)
        if node.func == "abs":
            return args[0].type == "int64" or self.nullable(args[0], loose)
        if node.func == "round" and args[0].type == "float64":
            if node.digits is None or node.digits < 0:
                return True
            return self.nullable(args[0], loose)
        return any(self.nullable(a) for a in args)

    # Building blocks ---------------------------------------------------------------------------

    def name(self, name: str) -> str:
        try:
            code = self.code_of[name]
        except KeyError:
            raise ValueError(f"render: no code for name {name!r} in code_of") from None
        if _identifier(code):
            return code
        try:
            tree = ast.parse(code, mode="eval").body
        except SyntaxError as error:
            problem = f"render: the code for {name!r} is not an expression: {code!r}"
            raise ValueError(problem) from error
        atomic = isinstance(
            tree, ast.Name | ast.Subscript | ast.Attribute | ast.Call | ast.Constant
        )
        return code if atomic else f"({code})"

    def use(self, node: _Node, reads: int, *, loose: bool = False) -> _Use:
        code = self.code(node, loose=loose)
        repeatable = isinstance(node, _Const) or (isinstance(node, _Name) and _identifier(code))
        if reads < 2 or repeatable:
            return _Use(code, code)
        temp = self.fresh()
        return _Use(f"({temp} := {code})", temp)

    def operand(
        self, node: _Node, guards: list[str], *, reads: int = 1, loose: bool = False
    ) -> _Use:
        """``node`` for ``reads`` reads after its null test, added to ``guards`` if it needs one."""
        nullable = self.nullable(node, loose)
        use = self.use(node, reads + nullable, loose=loose)
        if nullable:
            guards.append(f"{use.read()} is None")
        return use

    @staticmethod
    def guarded(guards: list[str], value: str) -> str:
        return f"(None if {' or '.join(guards)} else {value})" if guards else value

    def int_checked(self, guards: list[str], core: str) -> str:
        temp = self.fresh()
        guards.append(f"not {_INT64_MIN} <= ({temp} := {core}) <= {_INT64_MAX}")
        return self.guarded(guards, temp)

    def float_checked(self, guards: list[str], core: str) -> str:
        # x - x is 0.0 for every finite x, NaN for infinities and NaN: measured as fast as a
        # range test, and faster than a call of math.isfinite.
        temp = self.fresh()
        guards.append(f"({temp} := {core}) - {temp} != 0.0")
        return self.guarded(guards, temp)

    # Nodes ---------------------------------------------------------------------------------------

    def code(self, node: _Node, *, loose: bool = False) -> str:
        guards: list[str] = []
        match node:
            case _Name():
                return self.name(node.name)
            case _Const():
                return _literal(node.value)
            case _Neg():
                return self.negation(node, loose)
            case _Arith():
                return self.arithmetic(node, loose)
            case _Compare():
                parts = [self.operand(o, guards).read() for o in node.operands]
                chain = "".join(f" {op} {p}" for op, p in zip(node.ops, parts[1:], strict=True))
                return self.guarded(guards, f"({parts[0]}{chain})")
            case _IsNone():
                if not self.nullable(node.operand):  # (and 0 is None is a SyntaxWarning)
                    return str(node.negate)
                return f"({self.code(node.operand)} is {'not ' if node.negate else ''}None)"
            case _In():
                value = self.operand(node.operand, guards).read()
                literals = ", ".join(_literal(v) for v in node.values)
                container = f"{{{literals}}}" if literals else "()"  # {…}: a frozenset constant
                test = "not in" if node.negate else "in"
                return self.guarded(guards, f"({value} {test} {container})")
            case _Logic():
                return self.logic(node)
            case _Not():
                value = self.operand(node.operand, guards).read()
                return self.guarded(guards, f"not {value}") if guards else f"(not {value})"
            case _IfElse():
                body = self.code(node.body, loose=loose)
                orelse = self.code(node.orelse, loose=loose)
                return f"({body} if {self.code(node.test)} else {orelse})"  # a null test: else
            case _ToFloat():
                value = self.operand(node.operand, guards).read()
                return self.guarded(guards, f"float({value})")
            case _Call():
                return self.call(node, loose)
        raise AssertionError(f"unknown node {node!r}")

    def negation(self, node: _Neg, loose: bool) -> str:
        guards: list[str] = []
        if node.type == "int64":
            value = self.operand(node.operand, guards, reads=2)
            guards.append(f"{value.read()} == {_INT64_MIN}")
            return self.guarded(guards, f"-{value.read()}")
        value = self.operand(node.operand, guards, loose=loose)
        return self.guarded(guards, f"-{value.read()}") if guards else f"(-{value.read()})"

    def arithmetic(self, node: _Arith, loose: bool) -> str:
        guards: list[str] = []
        if node.type == "string":
            a, b = self.operand(node.left, guards), self.operand(node.right, guards)
            return self.guarded(guards, f"({a.read()} + {b.read()})")
        plan = _plan(node, loose)
        a = self.operand(node.left, guards, loose=plan.left_loose)
        b = self.operand(node.right, guards, reads=1 + plan.zero_test, loose=plan.right_loose)
        if plan.zero_test:
            guards.append(f"{b.read()} == 0")
        core = f"{a.read()} {node.op} {b.read()}"
        if plan.check == "int":
            return self.int_checked(guards, core)
        if plan.check == "float":
            return self.float_checked(guards, core)
        return self.guarded(guards, f"({core})")

    def logic(self, node: _Logic) -> str:
        op = node.op
        sure = [o for o in node.operands if not self.nullable(o)]
        maybe = [o for o in node.operands if self.nullable(o)]
        if not maybe:
            return "(" + f" {op} ".join(self.code(o) for o in node.operands) + ")"
        if len(maybe) == 1:  # the one that can be null decides, unless a sure one does
            tests = f" {op} ".join(self.code(o) for o in sure)
            value = self.code(maybe[0])
            if op == "and":
                return f"({value} if {tests} else False)"
            return f"(True if {tests} else {value})"
        # Three-valued: the dominant value (False for and, True for or) wins, then null.
        dominant = op == "or"
        wins: list[str] = []
        nulls: list[str] = []
        for operand in node.operands:
            if operand in sure:
                wins.append(self.code(operand) if dominant else f"not {self.code(operand)}")
                continue
            use = self.use(operand, 2)
            wins.append(f"{use.read()} is {dominant}")
            nulls.append(f"{use.read()} is None")
        win, null = " or ".join(wins), " or ".join(nulls)
        return f"({dominant} if {win} else None if {null} else {not dominant})"

    def call(self, node: _Call, loose: bool) -> str:
        func, args = node.func, node.args
        guards: list[str] = []
        if func == "coalesce":
            # The first argument that cannot be null ends the search.
            last = next((i for i, a in enumerate(args) if not self.nullable(a)), len(args) - 1)
            code = self.code(args[last])
            for arg in reversed(args[:last]):
                use = self.use(arg, 2)
                test = use.read()
                code = f"({use.read()} if {test} is not None else {code})"
            return code
        if func in ("min", "max"):
            values = [self.operand(a, guards).read() for a in args]
            return self.guarded(guards, f"{func}({', '.join(values)})")
        (arg,) = args
        if func in ("lower", "upper"):
            return self.guarded(guards, f"{self.operand(arg, guards).read()}.{func}()")
        if func == "len":
            return self.guarded(guards, f"len({self.operand(arg, guards).read()})")
        if func == "abs":
            if arg.type == "int64":
                value = self.operand(arg, guards, reads=2)
                guards.append(f"{value.read()} == {_INT64_MIN}")
            else:
                value = self.operand(arg, guards, loose=loose)
            return self.guarded(guards, f"abs({value.read()})")
        digits = node.digits
        if digits is None:  # round(x)
            if arg.type == "int64":
                return self.code(arg)
            value = self.operand(arg, guards, reads=2, loose=True)
            guards.append(f"not {_ROUND_LOW} <= {value.read()} < {_ROUND_HIGH}")
            return self.guarded(guards, f"round({value.read()})")
        if arg.type == "int64":
            value = self.operand(arg, guards)
            rounded = value.read() if digits >= 0 else f"round({value.read()}, {digits})"
            return self.guarded(guards, f"float({rounded})")
        if digits >= 0:  # rounds a finite float to a finite float
            value = self.operand(arg, guards, loose=loose)
            return self.guarded(guards, f"round({value.read()}, {digits})")
        return f"_x_round({self.code(arg, loose=True)}, {digits})"


@dataclass(frozen=True, slots=True)
class _Plan:
    """How numeric arithmetic is rendered: which operands may be loose, whether the divisor is
    tested for zero, and the check of the result (int64 range, finite float, or none)."""

    left_loose: bool
    right_loose: bool
    zero_test: bool
    check: Literal["int", "float"] | None


def _plan(node: _Arith, loose: bool) -> _Plan:
    op, ints = node.op, node.left.type == node.right.type == "int64"
    if op in ("+", "-", "*"):
        return _Plan(True, True, False, "int" if ints else None if loose else "float")
    divisor = node.right.value if isinstance(node.right, _Const) else None
    bounded = divisor is not None and abs(divisor) >= 1  # |a / d| <= |a|: no overflow
    zero_test = not divisor
    if ints:  # int / int is a float within ±2**63; only -2**63 // -1 overflows
        check: Literal["int", "float"] | None = None
        if op == "//" and divisor in (None, -1):
            check = "int"
        return _Plan(False, False, zero_test, check)
    if op == "/":  # a non-finite dividend gives a non-finite quotient
        left_loose = loose if bounded else True
        return _Plan(left_loose, False, zero_test, None if bounded or loose else "float")
    # a float % is no larger than its divisor
    return _Plan(False, False, zero_test, None if op == "%" or bounded or loose else "float")


def _round_digits(value: float | None, digits: int) -> float | None:
    """``round(value, digits)`` for digits < 0, which can overflow, and for non-finite values."""
    if value is None:
        return None
    try:
        result = round(value, digits)
    except OverflowError:
        return None
    return result if result - result == 0.0 else None


RUNTIME: dict[str, Any] = {"_x_round": _round_digits}
"""The helpers rendered code may call, by these names: put them in the generated code's globals."""


# --- The public face -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A checked expression: its type, whether it can be null, the names it reads, and its code.

    Made by :func:`compile_expression`.
    """

    text: str
    type: ExprType
    nullable: bool
    names: tuple[str, ...]
    _tree: _Node = field(repr=False)
    _functions: dict[tuple[str, ...], Callable[..., Any]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def render(self, code_of: Mapping[str, str], *, temp: str = "_x") -> str:
        """Python source of one expression computing the value, each name ``n`` read by the code
        ``code_of[n]``; temporaries are named ``{temp}0``, ``{temp}1``, …; helpers are
        :data:`RUNTIME`'s."""
        if not _identifier(temp):
            raise ValueError(f"render: temp must be an identifier, got {temp!r}")
        return _Renderer(code_of, temp).code(self._tree)

    def function(self, names: Sequence[str]) -> Callable[..., Any]:
        """A compiled function taking the values of ``names`` positionally (cached)."""
        key = tuple(names)
        compiled = self._functions.get(key)
        if compiled is None:
            compiled = self._functions[key] = self._compile(key)
        return compiled

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The value for ``values`` (a mapping with at least :attr:`names`)."""
        return self.function(self.names)(*[values[name] for name in self.names])

    def _compile(self, names: tuple[str, ...]) -> Callable[..., Any]:
        if len(set(names)) != len(names):
            raise ValueError(f"function: names repeat: {', '.join(names)}")
        missing = [name for name in self.names if name not in names]
        if missing:
            raise ValueError(f"function: {self.text!r} reads {', '.join(missing)}, not in names")
        params = [f"_v{i}" for i in range(len(names))]
        code = self.render(dict(zip(names, params, strict=True)))
        source = f"def _x_function({', '.join(params)}):\n    return {code}\n"
        namespace = dict(RUNTIME)
        exec(compile(source, f"<expression {self.text!r}>", "exec"), namespace)
        function: Callable[..., Any] = namespace["_x_function"]
        return function


def compile_expression(
    text: str, names: Mapping[str, NameType], *, what: str, dotted: bool = False
) -> Expression:
    """Parse and type-check ``text`` over ``names``; raise :class:`ExpressionError` (its message
    prefixed by ``what``, e.g. ``"view 'card': column 'big'"``) when it is outside the language or
    its types do not fit. ``dotted=True`` allows ``a.b`` for a declared name ``"a.b"``."""
    checker = _Checker(text, names, what=what, dotted=dotted)
    tree = checker.parse()
    return Expression(text, tree.type, tree.nullable, tuple(checker.used), tree)
