package intercept

import (
	"fmt"

	"github.com/coreos/go-iptables/iptables"
)

// IPTables is the narrow part of *iptables.IPTables (coreos/go-iptables) that
// Manager uses, declared here so that unit tests can use a map-backed fake.
//
// List returns lines as `iptables -t TABLE -S CHAIN` prints them: first
// "-P CHAIN POLICY" for a built-in chain or "-N CHAIN" for a user chain, then
// one "-A CHAIN SPEC..." per rule in order. ChainExists reports a missing
// chain as (false, nil), not as an error.
type IPTables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
}

// lockWaitSeconds bounds how long one iptables command waits for the
// xtables lock, so a stuck holder cannot hang start-up or shutdown forever.
const lockWaitSeconds = 10

// NewIPTables returns the IPv4 iptables of the current network namespace,
// run through the iptables command. It fails with a clear error when the
// command is missing from PATH.
func NewIPTables() (IPTables, error) {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("setting up iptables (is the iptables command installed and in PATH?): %w", err)
	}
	return ipt, nil
}
