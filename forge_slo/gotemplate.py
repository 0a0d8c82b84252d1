"""Go text/template text, as Prometheus (alert annotations) and Flagger (metric templates) render it.

Two jobs, both so that a compiled file is accepted by the program that reads it:

- :func:`literal` makes any text render as itself (``{{`` becomes ``{{`{{`}}``).
- :func:`template_error` checks a template the user wrote (an annotation) the way Go's parser does when
  Prometheus loads a rule file: syntax, block structure, declared variables and known functions. It
  returns the parser's kind of complaint, or None when Prometheus would accept the template.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LEFT, RIGHT = "{{", "}}"

# Go's built-in template functions and those Prometheus adds (template/template.go, Prometheus 2.42: the
# oldest release the compiled rules support). Functions of later releases (now, toDuration, ...) are not
# here on purpose: a rule using them would not load into that Prometheus.
GO_FUNCTIONS = frozenset({
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html", "js", "urlquery",
    "call", "eq", "ne", "lt", "le", "gt", "ge",
})
PROMETHEUS_FUNCTIONS = frozenset({
    "query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml", "match", "title",
    "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel", "humanize", "humanize1024",
    "humanizeDuration", "humanizePercentage", "humanizeTimestamp", "toTime", "pathPrefix", "externalURL",
    "parseDuration", "stripPort", "stripDomain",
})
# Variables Prometheus declares before an alert's annotation and label templates.
PROMETHEUS_VARIABLES = frozenset({"$", "$labels", "$externalLabels", "$externalURL", "$value"})


def literal(text: str) -> str:
    """``text`` as a Go template that renders exactly ``text`` (only ``{{`` opens an action)."""
    return text.replace(LEFT, "{{`{{`}}")


def template_error(text: str, functions: Iterable[str] = GO_FUNCTIONS | PROMETHEUS_FUNCTIONS,
                   variables: Iterable[str] = PROMETHEUS_VARIABLES) -> str | None:
    """Why Go's template parser would refuse ``text`` (with these functions and variables), or None."""
    try:
        _Parser(_lex(text), frozenset(functions), set(variables)).parse()
    except TemplateError as exc:
        return str(exc)
    return None


class TemplateError(Exception):
    pass


# Lexer ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str   # text, left, right, ident, keyword, field, var, string, number, char, pipe, declare, assign,
    #             lparen, rparen, comma, dot, bool, nil, eof
    value: str


KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})
_SPACE = " \t\r\n"
_NUMBER = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+"
    r"|(?:[0-9][0-9_]*)?\.?[0-9_]*(?:[eE][+-]?[0-9_]+)?)i?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_CHAIN = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_VARIABLE = re.compile(r"\$[A-Za-z0-9_]*")


def _lex(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        start = text.find(LEFT, i)
        if start < 0:
            break
        i = start + 2
        if text.startswith("-", i) and i + 1 < n and text[i + 1] in _SPACE:
            i += 2  # left trim marker
        j = i
        while j < n and text[j] in _SPACE:
            j += 1
        if text.startswith("/*", j) and j == i:
            end = text.find("*/", j + 2)
            if end < 0:
                raise TemplateError("unclosed comment")
            k = end + 2
            if text.startswith(" -}}", k):
                k += 4
            elif text.startswith(RIGHT, k):
                k += 2
            else:
                raise TemplateError("comment ends before closing delimiter")
            i = k
            continue
        tokens.append(Token("left", LEFT))
        i = _lex_action(text, i, tokens)
    tokens.append(Token("eof", ""))
    return tokens


def _lex_action(text: str, i: int, tokens: list[Token]) -> int:
    """The tokens of one action, from just after ``{{`` to just after its ``}}``."""
    n = len(text)
    depth = 0
    while True:
        if i >= n:
            raise TemplateError("unclosed action")
        c = text[i]
        if c in _SPACE:
            j = i
            while j < n and text[j] in _SPACE:
                j += 1
            if text.startswith("-}}", j) and depth == 0:
                tokens.append(Token("right", RIGHT))
                return j + 3
            i = j
        elif text.startswith(RIGHT, i):
            if depth:
                raise TemplateError("unclosed left paren")
            tokens.append(Token("right", RIGHT))
            return i + 2
        elif c in "()":
            depth += 1 if c == "(" else -1
            if depth < 0:
                raise TemplateError("unexpected right paren")
            tokens.append(Token("lparen" if c == "(" else "rparen", c))
            i += 1
        else:
            i = _lex_operand(text, i, tokens)


_PUNCTUATION = {"|": "pipe", "=": "assign", ",": "comma"}


def _lex_operand(text: str, i: int, tokens: list[Token]) -> int:
    """One token inside an action that is not space, a paren or the closing delimiter."""
    c = text[i]
    if c in _PUNCTUATION:
        tokens.append(Token(_PUNCTUATION[c], c))
        return i + 1
    if c == ":":
        if not text.startswith(":=", i):
            raise TemplateError("expected :=")
        tokens.append(Token("declare", ":="))
        return i + 2
    if c == '"':
        return _lex_quoted(text, i, tokens)
    if c == "`":
        end = text.find("`", i + 1)
        if end < 0:
            raise TemplateError("unterminated raw quoted string")
        tokens.append(Token("string", text[i:end + 1]))
        return end + 1
    if c == "'":
        return _lex_char(text, i, tokens)
    if c == "$":
        m = _VARIABLE.match(text, i)
        assert m is not None
        tokens.append(Token("var", m.group()))
        return _lex_chain(text, _after_word(text, m.end()), tokens)
    if c == "." and not (i + 1 < len(text) and text[i + 1].isdigit()):
        m = _FIELD_CHAIN.match(text, i)
        if m is None:
            tokens.append(Token("dot", "."))
            return i + 1
        tokens.append(Token("field", m.group()))
        return _no_dangling_dot(text, _after_word(text, m.end()))
    if c.isdigit() or c in "+-.":
        m = _NUMBER.match(text, i)
        if m is None or not m.group() or m.group() in "+-.":
            raise TemplateError(f"bad number syntax: {text[i:i + 10]!r}")
        tokens.append(Token("number", m.group()))
        return _after_number(text, m.end())
    if c.isalpha() or c == "_":
        m = _IDENT.match(text, i)
        assert m is not None
        word = m.group()
        kind = "keyword" if word in KEYWORDS else "bool" if word in ("true", "false") else \
            "nil" if word == "nil" else "ident"
        tokens.append(Token(kind, word))
        return _lex_chain(text, _after_word(text, m.end()), tokens)
    raise TemplateError(f"unrecognized character in action: {c!r}")


def _after_word(text: str, i: int) -> int:
    """Go requires a space, the closing delimiter or one of ``.,|:()`` right after a word or variable."""
    if i < len(text) and text[i] not in _SPACE + ".,|:()" and not text.startswith(RIGHT, i):
        raise TemplateError(f"bad character {text[i]!r}")
    return i


def _after_number(text: str, i: int) -> int:
    if i < len(text) and (text[i].isalnum() or text[i] == "_"):
        raise TemplateError(f"bad number syntax: {text[i]!r}")
    return i


def _lex_chain(text: str, i: int, tokens: list[Token]) -> int:
    """``$x.Field.Sub`` or ``fn.Field``: the field chain right after a word."""
    m = _FIELD_CHAIN.match(text, i)
    if m is not None:
        tokens.append(Token("chain", m.group()))
        i = _after_word(text, m.end())
    return _no_dangling_dot(text, i)


def _no_dangling_dot(text: str, i: int) -> int:
    if text.startswith(".", i):
        raise TemplateError("unexpected <.> in operand")
    return i


def _lex_quoted(text: str, i: int, tokens: list[Token]) -> int:
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "\n":
            break
        if c == '"':
            body = text[i + 1:j]
            _check_escapes(body)
            tokens.append(Token("string", text[i:j + 1]))
            return j + 1
        j += 1
    raise TemplateError("unterminated quoted string")


_ESC = r"\\(?:[abfnrtv\\]|[0-7]{3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|%s)"
_STRING_ESCAPES = re.compile(_ESC % '"')
_CHAR = re.compile(r"'(?:" + _ESC % "'" + r"|[^\\'\n])'")


def _check_escapes(body: str) -> None:
    if "\\" in _STRING_ESCAPES.sub("", body):
        raise TemplateError("invalid syntax in quoted string")


def _lex_char(text: str, i: int, tokens: list[Token]) -> int:
    m = _CHAR.match(text, i)
    if m is None:
        raise TemplateError("unterminated or malformed character constant")
    tokens.append(Token("char", m.group()))
    return m.end()


# Parser ---------------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, tokens: list[Token], functions: frozenset[str], variables: set[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.functions = functions
        self.scopes: list[set[str]] = [set(variables)]

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, kind: str, context: str) -> Token:
        token = self.next()
        if token.kind != kind:
            raise TemplateError(f"unexpected {_show(token)} in {context}")
        return token

    def parse(self) -> None:
        end = self.parse_list(set(), top=True, in_range=False)
        if end != "eof":
            raise TemplateError(f"unexpected {{{{{end}}}}}")

    def parse_list(self, stops: set[str], *, top: bool, in_range: bool) -> str:
        """Actions until one of ``stops`` (``end``, ``else``) or the end; returns which ended the list."""
        while True:
            token = self.next()
            if token.kind == "eof":
                if stops:
                    raise TemplateError("unexpected EOF")
                return "eof"
            if token.kind != "left":
                raise TemplateError(f"unexpected {_show(token)}")
            head = self.peek()
            if head.kind == "keyword":
                self.next()
                word = head.value
                if word in stops:
                    return word
                self.keyword(word, top=top, in_range=in_range)
            else:
                self.pipeline("command", declarations=True, end="right")
                self.expect("right", "command")

    def keyword(self, word: str, *, top: bool, in_range: bool) -> None:
        if word in ("end", "else"):
            raise TemplateError(f"unexpected {{{{{word}}}}}")
        if word in ("break", "continue"):
            if not in_range:
                raise TemplateError(f"{{{{{word}}}}} outside {{{{range}}}}")
            self.expect("right", word)
            return
        if word in ("if", "with", "range"):
            self.control(word, in_range=in_range)
            return
        if word == "template":
            self.expect("string", "template invocation")
            if self.peek().kind != "right":
                self.pipeline("template", declarations=True, end="right")
            self.expect("right", "template invocation")
            return
        if word in ("define", "block"):
            if word == "define" and not top:
                raise TemplateError("unexpected {{define}}: define only at top level")
            self.expect("string", f"{word} clause")
            if word == "block":
                self.pipeline("block", declarations=True, end="right")
            self.expect("right", f"{word} clause")
            self.scopes.append({"$"} if word == "define" else set())
            if self.parse_list({"end"}, top=False, in_range=False) != "end":
                raise TemplateError("unexpected EOF")
            self.scopes.pop()
            self.expect("right", "end")

    def control(self, word: str, *, in_range: bool) -> None:
        self.scopes.append(set())
        self.pipeline(word, declarations=True, end="right", allow_comma=word == "range")
        self.expect("right", word)
        inner_range = in_range or word == "range"
        ended = self.parse_list({"end", "else"}, top=False, in_range=inner_range)
        self.scopes.pop()
        if ended == "else":
            if word == "if" and self.peek().kind == "keyword" and self.peek().value == "if":
                self.next()
                self.control("if", in_range=in_range)  # {{else if}} is {{else}}{{if}}...{{end}} sharing the end
                return
            self.expect("right", "else")
            self.scopes.append(set())
            if self.parse_list({"end"}, top=False, in_range=in_range) != "end":
                raise TemplateError("unexpected EOF")
            self.scopes.pop()
        self.expect("right", "end")

    def declared(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes)

    def pipeline(self, context: str, *, declarations: bool, end: str, allow_comma: bool = False) -> None:
        if declarations:
            self.declarations(context, allow_comma)
        commands = 0
        while True:
            if self.peek().kind in (end, "eof"):
                if commands == 0:
                    raise TemplateError(f"missing value for {context}")
                return
            self.command(first=commands == 0)
            commands += 1
            if self.peek().kind == "pipe":
                self.next()
                if self.peek().kind in (end, "eof"):
                    return  # Go's parser accepts a trailing '|'
                continue
            if self.peek().kind not in (end, "eof"):
                raise TemplateError(f"unexpected {_show(self.peek())} in operand")

    def declarations(self, context: str, allow_comma: bool) -> None:
        start = self.pos
        names = []
        while self.peek().kind == "var":
            names.append(self.next().value)
            if self.peek().kind == "comma" and allow_comma and len(names) == 1:
                self.next()
                continue
            break
        if names and self.peek().kind in ("declare", "assign"):
            op = self.next()
            if len(names) > 1 and context != "range":
                raise TemplateError("too many declarations")
            for name in names:
                if op.kind == "declare":
                    self.scopes[-1].add(name)
                elif not self.declared(name):
                    raise TemplateError(f"undefined variable {name!r}")
            return
        self.pos = start  # not a declaration: the variables are operands

    def command(self, *, first: bool) -> None:
        operands = 0
        while self.peek().kind not in ("right", "pipe", "rparen", "eof"):
            token = self.peek()
            if token.kind in ("keyword", "comma", "declare", "assign"):
                raise TemplateError(f"unexpected {_show(token)} in operand")
            self.operand(position=operands, first_command=first)
            operands += 1
        if operands == 0:
            raise TemplateError(f"missing value for command; found {_show(self.peek())}")

    def operand(self, *, position: int, first_command: bool) -> None:
        token = self.next()
        if token.kind == "ident":
            if token.value not in self.functions:
                raise TemplateError(f'function "{token.value}" not defined')
        elif token.kind == "var":
            if not self.declared(token.value.split(".")[0]):
                raise TemplateError(f'undefined variable "{token.value}"')
        elif token.kind == "lparen":
            self.pipeline("parenthesized pipeline", declarations=False, end="rparen")
            self.expect("rparen", "parenthesized pipeline")
        elif token.kind in ("string", "number", "char", "bool", "dot", "nil") and position == 0 and not first_command:
            raise TemplateError("non executable command in pipeline stage")
        elif token.kind not in ("field", "string", "number", "char", "bool", "dot", "nil"):
            raise TemplateError(f"unexpected {_show(token)} in operand")
        if self.peek().kind == "chain":
            if token.kind in ("string", "number", "char", "bool", "nil"):
                raise TemplateError(f"unexpected . after term {token.value!r}")
            self.next()


def _show(token: Token) -> str:
    if token.kind == "eof":
        return "EOF"
    if token.kind == "right":
        return "}}"
    return f"{token.value!r}"
