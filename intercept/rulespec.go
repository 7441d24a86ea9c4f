package intercept

import (
	"errors"
	"fmt"
	"strings"
)

// ruleLine is one line of `iptables -S` output: "-P CHAIN POLICY",
// "-N CHAIN" or "-A CHAIN SPEC...".
type ruleLine struct {
	op    string   // "-P", "-N" or "-A"
	chain string   // the chain the line is about
	args  []string // the policy for -P, the rule spec for -A, empty for -N
}

// parseRuleLine reads one line of `iptables -S` output. The text comes from
// an outside program (and through it from whatever else edits the
// namespace's rules), so anything unexpected is an error, never a panic.
func parseRuleLine(line string) (ruleLine, error) {
	fields, err := splitRuleArgs(line)
	if err != nil {
		return ruleLine{}, fmt.Errorf("parsing iptables rule %q: %w", line, err)
	}
	if len(fields) < 2 {
		return ruleLine{}, fmt.Errorf("parsing iptables rule %q: want an operation and a chain", line)
	}
	l := ruleLine{op: fields[0], chain: fields[1], args: fields[2:]}
	switch l.op {
	case "-A":
	case "-N":
		if len(l.args) != 0 {
			return ruleLine{}, fmt.Errorf("parsing iptables rule %q: -N takes only a chain name", line)
		}
	case "-P":
		if len(l.args) != 1 {
			return ruleLine{}, fmt.Errorf("parsing iptables rule %q: -P takes a chain and a policy", line)
		}
	default:
		return ruleLine{}, fmt.Errorf("parsing iptables rule %q: unknown operation %q", line, l.op)
	}
	if l.chain == "" {
		return ruleLine{}, fmt.Errorf("parsing iptables rule %q: empty chain name", line)
	}
	return l, nil
}

// splitRuleArgs splits a rule as `iptables -S` prints it into arguments.
// iptables double-quotes values that hold anything but letters, digits, '-'
// and '_' (a comment, say), and escapes the double quote, the backslash and
// the single quote inside with a backslash.
func splitRuleArgs(s string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inToken bool // cur holds a token, possibly an empty quoted one
		quoted  bool
	)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quoted && ch == '\\':
			if i+1 == len(s) {
				return nil, errors.New("backslash at end of line")
			}
			i++
			cur.WriteByte(s[i])
		case quoted && ch == '"':
			quoted = false
		case quoted:
			cur.WriteByte(ch)
		case ch == '"':
			quoted, inToken = true, true
		case ch == ' ' || ch == '\t':
			if inToken {
				args = append(args, cur.String())
				cur.Reset()
				inToken = false
			}
		default:
			cur.WriteByte(ch)
			inToken = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inToken {
		args = append(args, cur.String())
	}
	return args, nil
}

// formatRuleArgs joins args the way `iptables -S` prints them, quoting only
// what splitRuleArgs needs quoted, so that the two round-trip.
func formatRuleArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\"\\'") {
			parts[i] = a
			continue
		}
		var b strings.Builder
		b.WriteByte('"')
		for j := 0; j < len(a); j++ {
			if c := a[j]; c == '"' || c == '\\' || c == '\'' {
				b.WriteByte('\\')
			}
			b.WriteByte(a[j])
		}
		b.WriteByte('"')
		parts[i] = b.String()
	}
	return strings.Join(parts, " ")
}

// targetOf returns the chain a rule spec jumps (-j) or goes (-g) to, or "".
func targetOf(spec []string) string {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "-j" || spec[i] == "--jump" || spec[i] == "-g" || spec[i] == "--goto" {
			return spec[i+1]
		}
	}
	return ""
}
