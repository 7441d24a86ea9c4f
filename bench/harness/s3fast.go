package harness

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// S3's proxy-bound layout (scenario s3fast): the bulk server runs on the
// load core with the client, so that the proxy has the server core to
// itself, as a sidecar whose instances are on other machines has. In S3
// the sender and the proxy share a core, and the proxy's kernel work for
// its second connection is charged against the sender's.
const (
	bulkFastService = "bulkfast"
	haproxyTCPFast  = 18092
)

func (l *lab) bulkFastAddr() netip.AddrPort {
	return netip.AddrPortFrom(l.w.Instances[1].Host.IP, bulkPort)
}

// startBulkFast starts the second bulk server, pinned with the load
// generator, registers it, and starts HAProxy in mode tcp to it.
func (l *lab) startBulkFast(ctx context.Context) (sender, haproxy *netlab.Proc, err error) {
	in := l.w.Instances[1]
	sender, err = in.Host.Start("bulk-fast", nil, pinned(l.loadCPU, l.loadgen, "bulk-serve", "-listen", fmt.Sprintf(":%d", bulkPort), "-for", "4h")...)
	if err != nil {
		return nil, nil, err
	}
	if err := l.w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: bulkFastService + "-1", Name: bulkFastService, Address: in.Host.IP.String(), Port: bulkPort,
	}); err != nil {
		return nil, nil, fmt.Errorf("registering %s: %w", bulkFastService, err)
	}
	l.fastBulk = true
	conf, err := writeFile(l.dir, "haproxy-tcp-fast.cfg", haproxyHead+haproxyTCP(haproxyTCPFast, l.bulkFastAddr()))
	if err != nil {
		return nil, nil, err
	}
	if haproxy, err = l.w.App.Start("haproxy-tcp-fast", nil, pinned(l.serverCPU, "haproxy", "-db", "-f", conf)...); err != nil {
		return nil, nil, err
	}
	for _, addr := range []string{l.bulkFastAddr().String(), fmt.Sprintf("127.0.0.1:%d", haproxyTCPFast)} {
		err := meshlab.Poll(ctx, 10*time.Second, "the bulk server at "+addr, func() error {
			c, err := l.w.App.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return sender, haproxy, nil
}

// runS3Fast is S3 with the proxy alone on the server core.
func runS3Fast(ctx context.Context, l *lab, rep *Report) error {
	sender, haproxy, err := l.startBulkFast(ctx)
	if err != nil {
		return err
	}
	vip, err := l.resolve(ctx, bulkFastService+".local")
	if err != nil {
		return fmt.Errorf("resolving %s.local: %w", bulkFastService, err)
	}
	if err := l.waitEndpoints(ctx, 1, bulkFastService); err != nil {
		return err
	}
	targets := []bulkTarget{
		{"direct", l.bulkFastAddr().String(), "", nil},
		{"meshlet", fmt.Sprintf("%s:%d", vip, bulkPort), l.meshletBin(), l.meshletPid},
		{"haproxy (mode tcp)", fmt.Sprintf("127.0.0.1:%d", haproxyTCPFast), "", func() int { return haproxy.Cmd.Process.Pid }},
	}
	if b := l.cfg.MeshletBefore; b != "" {
		targets = append(targets, bulkTarget{"meshlet-before", targets[1].addr, b, l.meshletPid})
	}
	return l.runBulk(ctx, rep, policyProxyBound, sender.Cmd.Process.Pid, targets)
}
