// Package vip hands out the loopback virtual IPs that stand for mesh services.
//
// A service's address is derived from a hash of its name, so that every
// sidecar, and the same sidecar after a restart, gives the same name the same
// address. Two names whose hashes collide cannot share an address: the name
// assigned second takes the next free one, which is the only case where an
// address depends on the order in which names were first asked for.
package vip

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
)

// Table maps service names to virtual IPs and back. It is safe for
// concurrent use; lookups of names already assigned take a read lock only.
type Table struct {
	prefix netip.Prefix
	first  uint32 // first usable address, as an integer
	size   uint32 // number of usable addresses

	mu     sync.RWMutex
	byName map[string]netip.Addr
	byAddr map[netip.Addr]string
}

// NewTable returns an empty table over prefix, which must be IPv4 with room
// for at least two addresses besides its network and broadcast addresses.
func NewTable(prefix netip.Prefix) (*Table, error) {
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return nil, fmt.Errorf("VIP range %s: must be an IPv4 CIDR", prefix)
	}
	if prefix.Bits() > 30 {
		return nil, fmt.Errorf("VIP range %s: too small, need at most /30", prefix)
	}
	prefix = prefix.Masked()
	hosts := uint32(1)<<(32-prefix.Bits()) - 2 // without network and broadcast
	return &Table{
		prefix: prefix,
		first:  toUint(prefix.Addr()) + 1,
		size:   hosts,
		byName: make(map[string]netip.Addr),
		byAddr: make(map[netip.Addr]string),
	}, nil
}

// Prefix returns the range the table assigns from.
func (t *Table) Prefix() netip.Prefix { return t.prefix }

// Home returns the address name gets when nothing else holds it: a pure
// function of the name and the range.
func (t *Table) Home(name string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(name))
	return fromUint(t.first + h.Sum32()%t.size)
}

// Assign returns the address of name, assigning one on first use. It fails
// only when every address of the range is taken.
func (t *Table) Assign(name string) (netip.Addr, error) {
	t.mu.RLock()
	a, ok := t.byName[name]
	t.mu.RUnlock()
	if ok {
		return a, nil
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byName[name]; ok {
		return a, nil
	}
	if uint32(len(t.byAddr)) >= t.size {
		return netip.Addr{}, fmt.Errorf("assigning a VIP to %q: all %d addresses of %s are taken", name, t.size, t.prefix)
	}
	home := toUint(t.Home(name)) - t.first
	for i := uint32(0); ; i++ {
		a := fromUint(t.first + (home+i)%t.size)
		if _, taken := t.byAddr[a]; !taken {
			t.byName[name] = a
			t.byAddr[a] = name
			return a, nil
		}
	}
}

// Lookup returns the name an address was assigned to.
func (t *Table) Lookup(a netip.Addr) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	name, ok := t.byAddr[a]
	return name, ok
}

// Snapshot returns a copy of the assignments, name to address.
func (t *Table) Snapshot() map[string]netip.Addr {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string]netip.Addr, len(t.byName))
	for k, v := range t.byName {
		out[k] = v
	}
	return out
}

func toUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromUint(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}
