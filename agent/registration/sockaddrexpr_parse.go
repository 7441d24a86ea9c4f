package registration

import (
	"strconv"
	"strings"
)

// sockaddrExpr is a parsed go-sockaddr template: literal text and actions,
// each action a pipeline of function calls.
type sockaddrExpr struct {
	nodes []exprNode
}

// exprNode is literal text (pipe == nil) or an action.
type exprNode struct {
	text string
	pipe *exprPipe
}

type exprPipe struct {
	cmds []exprCmd
}

// exprCmd is a function name followed by its arguments, or a lone value
// (a literal, ".", or a parenthesized pipeline).
type exprCmd struct {
	args []exprOperand
}

type operandKind int

const (
	opIdent operandKind = iota + 1
	opString
	opNumber
	opDot
	opParen
)

type exprOperand struct {
	kind operandKind
	text string // opIdent: the name; opString: the value; opNumber: the source
	num  exprNumber
	pipe *exprPipe // opParen
}

// exprNumber holds what text/template's NumberNode would for an integer.
type exprNumber struct {
	i      int64
	u      uint64
	isInt  bool
	isUint bool
}

// keywordError names the text/template constructs meshlet does not evaluate.
func keywordError(pos int, word string) error {
	switch word {
	case "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue":
		return unsupportedErr(pos, "the %q action is not supported; write a single pipeline such as {{ GetInterfaceIP \"eth0\" }}", word)
	case "true", "false", "nil":
		return unsupportedErr(pos, "the constant %s is not supported", word)
	case "and", "or", "not", "len", "index", "slice", "print", "printf", "println",
		"html", "js", "urlquery", "eq", "ne", "lt", "le", "gt", "ge", "call":
		return unsupportedErr(pos, "the text/template built-in %q is not supported", word)
	}
	return nil
}

// parseExpr parses and type-checks a template without evaluating it.
func parseExpr(src string) (*sockaddrExpr, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &exprParser{toks: toks}
	e := &sockaddrExpr{}
	for p.i < len(p.toks) {
		t := p.next()
		if t.kind == tokText {
			e.nodes = append(e.nodes, exprNode{text: t.val})
			continue
		}
		// Only text and left delimiters appear outside actions.
		pipe, err := p.pipeline(tokRightDelim)
		if err != nil {
			return nil, err
		}
		p.next() // the right delimiter
		e.nodes = append(e.nodes, exprNode{pipe: pipe})
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return e, nil
}

type exprParser struct {
	toks []token
	i    int
}

func (p *exprParser) next() token {
	t := p.toks[p.i]
	p.i++
	return t
}

// peek returns the next token; lex guarantees every action ends with a
// right delimiter, so a pipeline never runs out of tokens.
func (p *exprParser) peek() token { return p.toks[p.i] }

func (p *exprParser) skipSpace() {
	for p.peek().kind == tokSpace {
		p.i++
	}
}

// pipeline parses commands separated by "|" up to end (a right delimiter or
// right paren), which it leaves unread.
func (p *exprParser) pipeline(end tokenKind) (*exprPipe, error) {
	pipe := &exprPipe{}
	for {
		p.skipSpace()
		t := p.peek()
		if t.kind == end {
			if len(pipe.cmds) == 0 {
				return nil, syntaxErr(t.pos, "missing value in action")
			}
			// text/template ignores a "|" at the end of a pipeline.
			return pipe, nil
		}
		cmd, err := p.command()
		if err != nil {
			return nil, err
		}
		pipe.cmds = append(pipe.cmds, cmd)
		if p.peek().kind == end {
			return pipe, nil
		}
		p.next() // the pipe
	}
}

// command parses operands separated by spaces, stopping before a "|" or the
// end of the pipeline.
func (p *exprParser) command() (exprCmd, error) {
	var cmd exprCmd
	for {
		p.skipSpace()
		op, err := p.operand()
		if err != nil {
			return exprCmd{}, err
		}
		cmd.args = append(cmd.args, op)
		switch t := p.peek(); t.kind {
		case tokSpace:
			p.skipSpace()
			if k := p.peek().kind; k == tokPipe || k == tokRightDelim || k == tokRightParen {
				return cmd, nil
			}
		case tokPipe, tokRightDelim, tokRightParen:
			return cmd, nil
		default:
			return exprCmd{}, syntaxErr(t.pos, "unexpected %s in operand; missing space?", t.val)
		}
	}
}

func (p *exprParser) operand() (exprOperand, error) {
	t := p.next()
	switch t.kind {
	case tokIdent:
		if err := keywordError(t.pos, t.val); err != nil {
			return exprOperand{}, err
		}
		if _, ok := lookupFunc(t.val); !ok {
			return exprOperand{}, syntaxErr(t.pos, "function %q is not a go-sockaddr template function", t.val)
		}
		return exprOperand{kind: opIdent, text: t.val}, nil
	case tokString:
		s, err := strconv.Unquote(t.val)
		if err != nil {
			return exprOperand{}, syntaxErr(t.pos, "bad string %s: %v", t.val, err)
		}
		return exprOperand{kind: opString, text: s}, nil
	case tokNumber:
		n, err := parseNumber(t)
		if err != nil {
			return exprOperand{}, err
		}
		return exprOperand{kind: opNumber, text: t.val, num: n}, nil
	case tokDot:
		return exprOperand{kind: opDot}, nil
	case tokLeftParen:
		pipe, err := p.pipeline(tokRightParen)
		if err != nil {
			return exprOperand{}, err
		}
		p.next() // the right paren
		return exprOperand{kind: opParen, pipe: pipe}, nil
	}
	return exprOperand{}, syntaxErr(t.pos, "unexpected %q in command", t.val)
}

// parseNumber reads an integer as text/template does (base prefixes,
// underscores, "-0" counting as unsigned); fractions, exponents and
// imaginary numbers are refused since no go-sockaddr function takes them.
func parseNumber(t token) (exprNumber, error) {
	var n exprNumber
	u, err := strconv.ParseUint(t.val, 0, 64)
	if err == nil {
		n.isUint, n.u = true, u
	}
	i, err := strconv.ParseInt(t.val, 0, 64)
	if err == nil {
		n.isInt, n.i = true, i
		if i == 0 {
			n.isUint, n.u = true, u
		}
	}
	if !n.isInt && !n.isUint {
		return exprNumber{}, unsupportedErr(t.pos, "the number %s is not supported: only integers are", t.val)
	}
	return n, nil
}

// String prints the template in a canonical form that parses back to the
// same tree.
func (e *sockaddrExpr) String() string {
	var b strings.Builder
	for i, n := range e.nodes {
		afterText := i > 0 && e.nodes[i-1].pipe == nil
		// A "{" at the end of text would join the "{{" that follows, so such
		// text gets a space that a trim marker takes away again.
		open, comment := "{{ ", "{{/**/}}"
		if afterText && strings.HasSuffix(e.nodes[i-1].text, "{") {
			open, comment = " {{- ", " {{- /**/}}"
		}
		switch {
		case n.pipe != nil:
			b.WriteString(open + n.pipe.String() + " }}")
		case afterText:
			// Two texts in a row had a comment between them; keep it.
			b.WriteString(comment + n.text)
		default:
			b.WriteString(n.text)
		}
	}
	return b.String()
}

func (p *exprPipe) String() string {
	cmds := make([]string, len(p.cmds))
	for i, c := range p.cmds {
		args := make([]string, len(c.args))
		for j, a := range c.args {
			args[j] = a.String()
		}
		cmds[i] = strings.Join(args, " ")
	}
	return strings.Join(cmds, " | ")
}

func (o exprOperand) String() string {
	switch o.kind {
	case opString:
		return strconv.Quote(o.text)
	case opDot:
		return "."
	case opParen:
		return "(" + o.pipe.String() + ")"
	}
	return o.text
}
