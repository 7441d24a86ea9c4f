package registration

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// The lexer follows text/template/parse's rules for the parts of the
// language go-sockaddr templates use (delimiters, trim markers, comments,
// strings, numbers, identifiers, pipes, parentheses), so that a template
// means here what it means to Consul. Everything else is refused here or in
// the parser with an error that names it; refusing more than text/template
// is safe, accepting something it reads differently is not.

type tokenKind int

const (
	tokText tokenKind = iota + 1
	tokLeftDelim
	tokRightDelim
	tokSpace
	tokPipe
	tokLeftParen
	tokRightParen
	tokString // val holds the quoted source, backquotes included
	tokNumber
	tokIdent
	tokDot
)

type token struct {
	kind tokenKind
	val  string
	pos  int // byte offset in the template, for errors
}

const spaceChars = " \t\r\n"

// exprError is a syntax error or a construct meshlet does not evaluate,
// with the byte offset where it was found.
type exprError struct {
	pos         int
	msg         string
	unsupported bool
}

func (e *exprError) Error() string {
	return fmt.Sprintf("%s (at byte %d)", e.msg, e.pos)
}

func syntaxErr(pos int, format string, args ...any) error {
	return &exprError{pos: pos, msg: fmt.Sprintf(format, args...)}
}

func unsupportedErr(pos int, format string, args ...any) error {
	return &exprError{pos: pos, msg: fmt.Sprintf(format, args...), unsupported: true}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

func isAlphaNumeric(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// hasLeftTrimMarker reports "- " right after "{{".
func hasLeftTrimMarker(s string) bool {
	return len(s) >= 2 && s[0] == '-' && isSpace(s[1])
}

// hasRightTrimMarker reports " -" right before "}}".
func hasRightTrimMarker(s string) bool {
	return len(s) >= 2 && isSpace(s[0]) && s[1] == '-'
}

func atRightDelim(src string, p int) (delim, trim bool) {
	if hasRightTrimMarker(src[p:]) && strings.HasPrefix(src[p+2:], "}}") {
		return true, true
	}
	return strings.HasPrefix(src[p:], "}}"), false
}

// lex splits a template into text and the tokens of its actions.
func lex(src string) ([]token, error) {
	var toks []token
	pos := 0
	for {
		x := strings.Index(src[pos:], "{{")
		if x < 0 {
			if pos < len(src) {
				toks = append(toks, token{tokText, src[pos:], pos})
			}
			return toks, nil
		}
		delim := pos + x
		after := delim + 2
		trim := hasLeftTrimMarker(src[after:])
		text := src[pos:delim]
		if trim {
			text = strings.TrimRight(text, spaceChars)
			after += 2
		}
		if text != "" {
			toks = append(toks, token{tokText, text, pos})
		}
		if strings.HasPrefix(src[after:], "/*") {
			end := strings.Index(src[after+2:], "*/")
			if end < 0 {
				return nil, syntaxErr(delim, "unclosed comment")
			}
			p := after + 2 + end + 2
			isDelim, trimRight := atRightDelim(src, p)
			if !isDelim {
				return nil, syntaxErr(p, "comment ends before closing delimiter")
			}
			pos = skipRightDelim(src, p, trimRight)
			continue
		}
		toks = append(toks, token{tokLeftDelim, "{{", delim})
		var err error
		if toks, pos, err = lexAction(src, after, toks); err != nil {
			return nil, err
		}
	}
}

func skipRightDelim(src string, p int, trim bool) int {
	if trim {
		p += 2
	}
	p += 2
	if trim {
		p += len(src[p:]) - len(strings.TrimLeft(src[p:], spaceChars))
	}
	return p
}

// lexAction reads the tokens of one action, from just after its "{{" (and
// trim marker) to just after its "}}", and returns where the text resumes.
func lexAction(src string, p int, toks []token) ([]token, int, error) {
	depth := 0
	emit := func(k tokenKind, start, end int) {
		toks = append(toks, token{k, src[start:end], start})
	}
	for {
		if isDelim, trim := atRightDelim(src, p); isDelim {
			if depth != 0 {
				return nil, 0, syntaxErr(p, "unclosed left paren")
			}
			emit(tokRightDelim, p, p)
			return toks, skipRightDelim(src, p, trim), nil
		}
		if p >= len(src) {
			return nil, 0, syntaxErr(p, "unclosed action")
		}
		start := p
		switch c := src[p]; {
		case isSpace(c):
			for p < len(src) && isSpace(src[p]) {
				p++
			}
			// The last space may belong to a " -}}".
			if isDelim, _ := atRightDelim(src, p-1); isDelim {
				p--
			}
			if p > start {
				emit(tokSpace, start, p)
			}
		case c == '|':
			p++
			emit(tokPipe, start, p)
		case c == '(':
			depth++
			p++
			emit(tokLeftParen, start, p)
		case c == ')':
			depth--
			if depth < 0 {
				return nil, 0, syntaxErr(p, "unexpected right paren")
			}
			p++
			emit(tokRightParen, start, p)
		case c == '"':
			for p++; ; p++ {
				if p >= len(src) || src[p] == '\n' {
					return nil, 0, syntaxErr(start, "unterminated quoted string")
				}
				if src[p] == '\\' {
					p++
					if p >= len(src) || src[p] == '\n' {
						return nil, 0, syntaxErr(start, "unterminated quoted string")
					}
					continue
				}
				if src[p] == '"' {
					break
				}
			}
			p++
			emit(tokString, start, p)
		case c == '`':
			end := strings.IndexByte(src[p+1:], '`')
			if end < 0 {
				return nil, 0, syntaxErr(start, "unterminated raw quoted string")
			}
			p += end + 2
			emit(tokString, start, p)
		case c == '.' && (p+1 >= len(src) || src[p+1] < '0' || src[p+1] > '9'):
			p++
			if !atTerminator(src, p) {
				for p < len(src) && isAlphaNumeric(src[p]) {
					p++
				}
				return nil, 0, unsupportedErr(start, "field access %s is not supported", src[start:p])
			}
			emit(tokDot, start, p)
		case c == '.' || c == '+' || c == '-' || '0' <= c && c <= '9':
			end, ok := scanNumber(src, p)
			if !ok {
				return nil, 0, syntaxErr(start, "bad number syntax: %q", src[start:end])
			}
			if end < len(src) && (src[end] == '+' || src[end] == '-') {
				return nil, 0, unsupportedErr(start, "complex number %s is not supported", src[start:end])
			}
			p = end
			emit(tokNumber, start, p)
		case isAlphaNumeric(c):
			for p < len(src) && isAlphaNumeric(src[p]) {
				p++
			}
			if p < len(src) && src[p] >= 0x80 {
				return nil, 0, syntaxErr(start, "function name %q followed by a non-ASCII character", src[start:p])
			}
			if !atTerminator(src, p) {
				return nil, 0, syntaxErr(p, "bad character %q after %s", src[p], src[start:p])
			}
			emit(tokIdent, start, p)
		case c == '$':
			return nil, 0, unsupportedErr(p, "variables ($) are not supported")
		case c == '\'':
			return nil, 0, unsupportedErr(p, "character constants ('x') are not supported")
		case c == '=' || c == ':':
			return nil, 0, unsupportedErr(p, "assignments (%c) are not supported", c)
		default:
			r, _ := utf8.DecodeRuneInString(src[p:])
			return nil, 0, syntaxErr(p, "unexpected character %q in action", r)
		}
	}
}

func atTerminator(src string, p int) bool {
	if p >= len(src) {
		return true
	}
	switch c := src[p]; {
	case isSpace(c), c == '.', c == ',', c == '|', c == ':', c == ')', c == '(':
		return true
	}
	return strings.HasPrefix(src[p:], "}}")
}

// scanNumber is text/template's: an optional sign, a base prefix, digits,
// fraction, exponent and an imaginary suffix; it returns where the number
// ends and whether no letter or digit sticks to it.
func scanNumber(src string, p int) (int, bool) {
	accept := func(valid string) bool {
		if p < len(src) && strings.IndexByte(valid, src[p]) >= 0 {
			p++
			return true
		}
		return false
	}
	acceptRun := func(valid string) {
		for accept(valid) {
		}
	}
	accept("+-")
	digits := "0123456789_"
	if accept("0") {
		switch {
		case accept("xX"):
			digits = "0123456789abcdefABCDEF_"
		case accept("oO"):
			digits = "01234567_"
		case accept("bB"):
			digits = "01_"
		}
	}
	acceptRun(digits)
	if accept(".") {
		acceptRun(digits)
	}
	if len(digits) == 10+1 && accept("eE") {
		accept("+-")
		acceptRun("0123456789_")
	}
	if len(digits) == 16+6+1 && accept("pP") {
		accept("+-")
		acceptRun("0123456789_")
	}
	accept("i")
	if p < len(src) && (isAlphaNumeric(src[p]) || src[p] >= 0x80) {
		return p + 1, false
	}
	return p, true
}
