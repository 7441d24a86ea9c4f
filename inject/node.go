package inject

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// Helpers over gopkg.in/yaml.v3 nodes. inject edits the user's document in
// place, node by node, so that comments, key order, styles and anchors of
// everything it does not touch come out as they went in.

// deref follows an alias to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// entry returns the key and value nodes of key in mapping m, its own keys
// only (not merged ones); nil when absent.
func entry(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i].Kind == yaml.ScalarNode {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// isMerge tells a YAML merge key (<<).
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && (k.Tag == "!!merge" || (k.Value == "<<" && k.Style == 0))
}

// lookup returns the value of key in mapping m as compose reads it: its own
// key, else one merged in with <<; aliases followed.
func lookup(m *yaml.Node, key string) *yaml.Node {
	m = deref(m)
	if _, v := entry(m, key); v != nil {
		return deref(v)
	}
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if !isMerge(m.Content[i]) {
			continue
		}
		src := deref(m.Content[i+1])
		var srcs []*yaml.Node
		if src.Kind == yaml.SequenceNode {
			srcs = src.Content
		} else {
			srcs = []*yaml.Node{src}
		}
		for _, s := range srcs {
			if v := lookup(s, key); v != nil {
				return v
			}
		}
	}
	return nil
}

// mapDelete removes key from mapping m (its own keys) and tells whether it
// was there.
func mapDelete(m *yaml.Node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Kind == yaml.ScalarNode && m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return true
		}
	}
	return false
}

// mapSet sets key in mapping m, replacing its value or appending the key.
func mapSet(m *yaml.Node, key string, v *yaml.Node) {
	if _, old := entry(m, key); old != nil {
		for i := 1; i < len(m.Content); i += 2 {
			if m.Content[i] == old {
				m.Content[i] = v
			}
		}
		return
	}
	m.Content = append(m.Content, scalar(key), v)
}

func scalar(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// quoted is a string that YAML would otherwise read as a number or bool.
func quoted(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s, Style: yaml.DoubleQuotedStyle}
}

func mapping(kv ...*yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: kv}
}

func flowSeq(items ...string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
	for _, it := range items {
		n.Content = append(n.Content, scalar(it))
	}
	return n
}

func mergeOf(anchored *yaml.Node) (*yaml.Node, *yaml.Node) {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!merge", Value: "<<"},
		&yaml.Node{Kind: yaml.AliasNode, Alias: anchored, Value: anchored.Anchor}
}

// kv is one KEY=VALUE of an environment or a label list, with the nodes it
// came from so that it can be removed.
type kv struct {
	key, value string
	hasValue   bool
	// node: the sequence item, or the key node of a mapping entry.
	node *yaml.Node
}

// pairs reads an environment or labels value, a mapping or a list of
// KEY=VALUE, as compose does (merge keys included, aliases followed).
func pairs(n *yaml.Node) []kv {
	n = deref(n)
	if n == nil {
		return nil
	}
	var out []kv
	switch n.Kind {
	case yaml.SequenceNode:
		for _, it := range n.Content {
			it = deref(it)
			k, v, ok := strings.Cut(it.Value, "=")
			out = append(out, kv{key: k, value: v, hasValue: ok, node: it})
		}
	case yaml.MappingNode:
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], deref(n.Content[i+1])
			if isMerge(k) {
				continue
			}
			seen[k.Value] = true
			p := kv{key: k.Value, node: k}
			if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
				p.value, p.hasValue = v.Value, true
			}
			out = append(out, p)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if !isMerge(n.Content[i]) {
				continue
			}
			src := deref(n.Content[i+1])
			srcs := []*yaml.Node{src}
			if src.Kind == yaml.SequenceNode {
				srcs = src.Content
			}
			for _, s := range srcs {
				for _, p := range pairs(s) {
					if !seen[p.key] {
						seen[p.key] = true
						p.node = nil // not ours to remove
						out = append(out, p)
					}
				}
			}
		}
	}
	return out
}

// removeItem takes the entry whose sequence item or mapping key is node out
// of n (the node pairs read). It tells whether it could.
func removeItem(n, node *yaml.Node) bool {
	if node == nil {
		return false
	}
	switch n.Kind {
	case yaml.SequenceNode:
		for i, it := range n.Content {
			if it == node {
				n.Content = append(n.Content[:i], n.Content[i+1:]...)
				return true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i] == node {
				n.Content = append(n.Content[:i], n.Content[i+2:]...)
				return true
			}
		}
	}
	return false
}

// strings of a scalar or a sequence of scalars (depends_on, cap_add, ...).
func stringsOf(n *yaml.Node) []string {
	n = deref(n)
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return []string{n.Value}
	case yaml.SequenceNode:
		var out []string
		for _, it := range n.Content {
			if it = deref(it); it.Kind == yaml.ScalarNode {
				out = append(out, it.Value)
			}
		}
		return out
	case yaml.MappingNode:
		var out []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			out = append(out, n.Content[i].Value)
		}
		return out
	}
	return nil
}

// anchors collects every anchor name in use, so that new ones do not clash.
func anchors(n *yaml.Node, into map[string]bool) {
	if n == nil {
		return
	}
	if n.Anchor != "" {
		into[n.Anchor] = true
	}
	for _, c := range n.Content {
		anchors(c, into)
	}
}

func uniqueName(base string, taken func(string) bool) string {
	if !taken(base) {
		return base
	}
	for i := 2; ; i++ {
		if s := fmt.Sprintf("%s-%d", base, i); !taken(s) {
			return s
		}
	}
}

// pathLine finds the line of a dotted path (compose-go's way of naming a
// place: services.web.ports.0) in the document; keys holding dots (labels
// such as aliyun.scale) are matched greedily. 0 when not found.
func pathLine(root *yaml.Node, path string) int {
	n := deref(root)
	line := 0
	if n != nil {
		line = n.Line
	}
	parts := strings.Split(path, ".")
	for len(parts) > 0 && n != nil {
		matched := false
		switch n.Kind {
		case yaml.MappingNode:
			for j := len(parts); j >= 1 && !matched; j-- {
				key := strings.Join(parts[:j], ".")
				if k, v := entry(n, key); k != nil {
					line, n, parts, matched = k.Line, deref(v), parts[j:], true
				} else if v := lookup(n, key); v != nil {
					line, n, parts, matched = v.Line, v, parts[j:], true
				}
			}
		case yaml.SequenceNode:
			var i int
			if _, err := fmt.Sscan(parts[0], &i); err == nil && i >= 0 && i < len(n.Content) {
				n = deref(n.Content[i])
				line, parts, matched = n.Line, parts[1:], true
			}
		}
		if !matched {
			break
		}
	}
	return line
}
