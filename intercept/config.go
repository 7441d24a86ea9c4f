package intercept

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Table is the iptables table that holds our chain: REDIRECT is a nat target.
const Table = "nat"

// ChainName is our own chain in Table. Every rule meshlet adds lives here,
// so removing meshlet is deleting one chain and the jumps to it.
const ChainName = "MESHLET_OUTPUT"

// HookChain is the built-in chain of Table that jumps to ChainName. OUTPUT
// sees the packets the app sends, which is all a sidecar needs.
const HookChain = "OUTPUT"

// dnsPort is the port the app's resolver queries; it is not configurable
// because the app's resolv.conf is not ours to change.
const dnsPort = 53

// maxUID is the largest uid the owner match accepts ((uid_t)-1 means "none").
const maxUID = 1<<32 - 2

// Config says what to redirect. The zero value is not valid: see Validate.
type Config struct {
	// DNSPort is the local port of meshlet's DNS listener (15053 by default).
	// UDP and TCP to port 53 from the app are REDIRECTed there, whatever
	// resolver address the app uses.
	DNSPort uint16
	// OutboundPort is the local port of meshlet's outbound listener (15001 by
	// default). TCP to VIPCIDR is REDIRECTed there.
	OutboundPort uint16
	// VIPCIDR is the IPv4 range of virtual IPs (127.77.0.0/16 by default).
	// Host bits are ignored: 127.77.3.4/16 means 127.77.0.0/16.
	VIPCIDR netip.Prefix
	// Mark is the socket mark on meshlet's own sockets (see MarkedDialer);
	// packets carrying exactly this mark skip our rules. 0 means no mark
	// exclusion, and then ExcludeUID must be set.
	Mark uint32
	// ExcludeUID is a uid whose packets skip our rules (iptables owner match),
	// for running meshlet as a dedicated user instead of marking sockets.
	// -1 means none. Note that 0 excludes every process running as root.
	ExcludeUID int
}

// Validate reports every problem of c at once, each naming its field. A
// config with neither Mark nor ExcludeUID is refused because meshlet would
// capture its own forwarded traffic and loop.
func (c Config) Validate() error {
	var errs []error
	if c.DNSPort == 0 {
		errs = append(errs, errors.New("DNSPort is 0: want the port of meshlet's DNS listener"))
	}
	if c.OutboundPort == 0 {
		errs = append(errs, errors.New("OutboundPort is 0: want the port of meshlet's outbound listener"))
	}
	if c.DNSPort != 0 && c.DNSPort == c.OutboundPort {
		errs = append(errs, fmt.Errorf("DNSPort and OutboundPort are both %d: TCP DNS and VIP connections would reach the same listener", c.DNSPort))
	}
	switch {
	case !c.VIPCIDR.IsValid():
		errs = append(errs, errors.New("VIPCIDR is not set: want an IPv4 prefix such as 127.77.0.0/16"))
	case !c.VIPCIDR.Addr().Is4():
		errs = append(errs, fmt.Errorf("VIPCIDR %s is not IPv4: the rules are IPv4 only", c.VIPCIDR))
	case c.VIPCIDR.Bits() == 0:
		errs = append(errs, fmt.Errorf("VIPCIDR %s would redirect every TCP connection of the app", c.VIPCIDR))
	}
	if c.ExcludeUID < -1 || c.ExcludeUID > maxUID {
		errs = append(errs, fmt.Errorf("ExcludeUID %d: want -1 (none) or a uid from 0 to %d", c.ExcludeUID, maxUID))
	}
	if c.Mark == 0 && c.ExcludeUID < 0 {
		errs = append(errs, errors.New("Mark is 0 and ExcludeUID is -1: meshlet would capture its own traffic; set at least one"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid intercept config: %w", errors.Join(errs...))
	}
	return nil
}

// Rules returns the rule specs of ChainName, in order, as argument lists for
// iptables after "-A MESHLET_OUTPUT". They are written in the canonical form
// that `iptables -S` prints back, so that Verify can compare what the kernel
// holds with what we want token by token.
//
// The exclusions come first: a packet of meshlet's own must RETURN before
// any REDIRECT can see it.
func (c Config) Rules() [][]string {
	dns := strconv.Itoa(int(c.DNSPort))
	var rules [][]string
	if c.Mark != 0 {
		rules = append(rules, []string{"-m", "mark", "--mark", fmt.Sprintf("0x%x", c.Mark), "-j", "RETURN"})
	}
	if c.ExcludeUID >= 0 {
		rules = append(rules, []string{"-m", "owner", "--uid-owner", strconv.Itoa(c.ExcludeUID), "-j", "RETURN"})
	}
	rules = append(rules,
		[]string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(dnsPort), "-j", "REDIRECT", "--to-ports", dns},
		[]string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(dnsPort), "-j", "REDIRECT", "--to-ports", dns},
		[]string{"-d", c.VIPCIDR.Masked().String(), "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.OutboundPort))},
	)
	return rules
}

// jumpRule is the rule spec in HookChain that sends packets to ChainName.
func jumpRule() []string {
	return []string{"-j", ChainName}
}
