package upstream

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/meshlet/meshlet/internal/consulerr"
)

// aclHidden notes the queries whose answers Consul's ACLs cut short
// (X-Consul-Results-Filtered-By-ACLs): Consul does not refuse a read the
// token may not make, it leaves out what the token may not see. Without
// this, a token that lacks service:read or node:read looks like a service
// without instances.
type aclHidden struct {
	mu     sync.Mutex
	hidden map[string]string // query → what permission it lacks
	inUse  map[string]bool   // of hidden, those that hide instances meshlet routes to
}

// note records whether the answer to query what was filtered; lacking
// says which permission would show the rest. routed marks the queries of
// services the app uses, which are in Status while they stay filtered.
func (a *aclHidden) note(what string, filtered bool, lacking string, routed bool, log *slog.Logger) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, was := a.hidden[what]
	switch {
	case filtered && !was:
		if a.hidden == nil {
			a.hidden, a.inUse = map[string]string{}, map[string]bool{}
		}
		a.hidden[what], a.inUse[what] = lacking, routed
		log.Warn("consul's ACLs hide part of the answer: meshlet's token lacks a permission", "query", what,
			"missing", lacking, "token_from", consulerr.TokenSource)
	case !filtered && was:
		delete(a.hidden, what)
		delete(a.inUse, what)
		log.Info("consul's ACLs no longer hide part of the answer", "query", what)
	}
}

// status returns a line per routed query whose answer is filtered.
func (a *aclHidden) status() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for what, lacking := range a.hidden {
		if a.inUse[what] {
			out = append(out, fmt.Sprintf("%s: consul's ACLs hide instances: meshlet's token (%s) lacks %s", what, consulerr.TokenSource, lacking))
		}
	}
	slices.Sort(out)
	return out
}
