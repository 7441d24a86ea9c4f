package registration

import (
	"fmt"
	"strings"

	sockaddr "github.com/hashicorp/go-sockaddr"
)

// check type-checks every action; text/template would find these errors
// only when the template runs.
func (e *sockaddrExpr) check() error {
	for _, n := range e.nodes {
		if n.pipe == nil {
			continue
		}
		if _, err := n.pipe.check(); err != nil {
			return err
		}
	}
	return nil
}

func (p *exprPipe) check() (valueKind, error) {
	var prev valueKind
	for i, c := range p.cmds {
		first := c.args[0]
		if first.kind != opIdent {
			switch {
			case i > 0:
				return 0, fmt.Errorf("%s cannot be stage %d of a pipeline: only a function can take the value piped in", first, i+1)
			case len(c.args) > 1:
				return 0, fmt.Errorf("%s is not a function and cannot take arguments", first)
			}
			k, err := first.check()
			if err != nil {
				return 0, err
			}
			prev = k
			continue
		}
		f, _ := lookupFunc(first.text) // the parser knows it exists
		n := len(c.args) - 1
		if i > 0 {
			n++
		}
		if n != len(f.params) {
			return 0, arityError(first.text, len(f.params), n, i > 0)
		}
		for j, a := range c.args[1:] {
			if err := a.checkArg(f.params[j]); err != nil {
				return 0, fmt.Errorf("argument %d of %s: %w", j+1, first.text, err)
			}
		}
		if i > 0 {
			want := f.params[len(f.params)-1]
			if !pipedFits(prev, want) {
				return 0, fmt.Errorf("%s takes %s piped in, not %s", first.text, want, prev)
			}
		}
		prev = f.result
	}
	return prev, nil
}

func arityError(name string, want, got int, piped bool) error {
	also := ""
	if piped {
		also = " (counting the value piped in)"
	}
	return fmt.Errorf("%s takes %s, got %d%s", name, plural(want, "argument"), got, also)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// pipedFits mirrors text/template, which passes a piped value only to a
// parameter of its own type.
func pipedFits(v valueKind, p paramKind) bool {
	return v == kindString && p == paramString || v == kindIfAddrs && p == paramIfAddrs
}

// check gives the kind of an operand standing alone as a command.
func (o exprOperand) check() (valueKind, error) {
	switch o.kind {
	case opString:
		return kindString, nil
	case opNumber:
		if !o.num.isInt {
			return 0, fmt.Errorf("%s overflows int", o.text)
		}
		return kindNumber, nil
	case opDot:
		return kindIfAddrs, nil
	case opParen:
		return o.pipe.check()
	}
	// An identifier as an argument is a call without arguments.
	f, _ := lookupFunc(o.text)
	if len(f.params) != 0 {
		return 0, fmt.Errorf("%s takes %s; put it in parentheses with them", o.text, plural(len(f.params), "argument"))
	}
	return f.result, nil
}

// checkArg mirrors text/template's evalArg: number literals convert to
// integer parameters, everything else must have the parameter's type.
func (o exprOperand) checkArg(p paramKind) error {
	if o.kind == opNumber {
		switch {
		case p == paramInt && o.num.isInt, p == paramUint && o.num.isUint:
			return nil
		}
		return fmt.Errorf("want %s, got %s", p, o.text)
	}
	k, err := o.check()
	if err != nil {
		return err
	}
	if !pipedFits(k, p) {
		return fmt.Errorf("want %s, got %s (%s)", p, k, o)
	}
	return nil
}

// eval runs a checked template in the current network namespace, as
// sockaddrtemplate.Parse does: "." is every interface address of the host.
func (e *sockaddrExpr) eval() (string, error) {
	ev := &evaluator{}
	var b strings.Builder
	for _, n := range e.nodes {
		if n.pipe == nil {
			b.WriteString(n.text)
			continue
		}
		v, err := ev.pipe(n.pipe)
		if err != nil {
			return "", err
		}
		// text/template prints values with fmt.Fprint too.
		fmt.Fprint(&b, v)
	}
	return b.String(), nil
}

type evaluator struct {
	dot    sockaddr.IfAddrs
	dotSet bool
}

func (ev *evaluator) pipe(p *exprPipe) (any, error) {
	var prev any
	for i, c := range p.cmds {
		first := c.args[0]
		if first.kind != opIdent {
			v, err := ev.operand(first)
			if err != nil {
				return nil, err
			}
			prev = v
			continue
		}
		args := make([]any, 0, len(c.args))
		for _, a := range c.args[1:] {
			v, err := ev.operand(a)
			if err != nil {
				return nil, err
			}
			args = append(args, v)
		}
		if i > 0 {
			args = append(args, prev)
		}
		v, err := call(first.text, args)
		if err != nil {
			return nil, err
		}
		prev = v
	}
	return prev, nil
}

func (ev *evaluator) operand(o exprOperand) (any, error) {
	switch o.kind {
	case opString:
		return o.text, nil
	case opNumber:
		// Standing alone it prints as text/template's int; as an argument
		// the function picks the signed or unsigned value.
		return o.num, nil
	case opDot:
		if !ev.dotSet {
			all, err := sockaddr.GetAllInterfaces()
			if err != nil {
				return nil, fmt.Errorf("listing interface addresses: %w", err)
			}
			ev.dot, ev.dotSet = all, true
		}
		return ev.dot, nil
	case opParen:
		return ev.pipe(o.pipe)
	}
	return call(o.text, nil)
}

// call runs a function the way text/template does, turning a panic inside
// go-sockaddr (LimitIfAddrs panics on some huge limits) into an error.
func call(name string, args []any) (v any, err error) {
	f, _ := lookupFunc(name)
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("calling %s: %v", name, r)
		}
	}()
	v, err = f.call(args)
	if err != nil {
		return nil, fmt.Errorf("calling %s: %w", name, err)
	}
	return v, nil
}

func (n exprNumber) String() string {
	return fmt.Sprint(n.i)
}
