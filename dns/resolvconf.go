package dns

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// ReadResolvConf returns the resolvers named by the "nameserver" lines of
// the resolv.conf at path, as "ip:53" ("[v6]:53"), in file order. Like the C
// library it skips nameserver values that are not IP addresses; it fails,
// naming the file, when the file cannot be read or names no usable resolver.
func ReadResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", err)
	}
	defer f.Close()
	servers, err := parseResolvConf(f)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf %s: %w", path, err)
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("resolv.conf %s lists no nameserver with an IP address", path)
	}
	return servers, nil
}

// parseResolvConf returns the nameservers of a resolv.conf as "ip:53".
func parseResolvConf(r io.Reader) ([]string, error) {
	var servers []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue // comments ('#', ';'), other keywords, blank lines
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		servers = append(servers, netip.AddrPortFrom(addr, 53).String())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return servers, nil
}
