package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/meshlet/meshlet/bench/loadgen"
)

// runS3 measures a raw TCP bulk transfer from the bulk server in the first
// instance to the app: directly, through meshlet (bulk.local: DNS, the
// redirect, meshlet's TCP proxy, which splices) and through HAProxy in
// mode tcp.
func runS3(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	vip, err := l.resolve(ctx, "bulk.local")
	if err != nil {
		return fmt.Errorf("resolving bulk.local: %w", err)
	}
	if err := l.waitEndpoints(ctx, 1, "bulk"); err != nil {
		return err
	}
	targets := []struct{ name, addr string }{
		{"direct", l.bulkAddr().String()},
		{"meshlet", fmt.Sprintf("%s:%d", vip, bulkPort)},
		{"haproxy (mode tcp)", fmt.Sprintf("127.0.0.1:%d", haproxyTCPPort)},
	}
	for _, t := range targets {
		rep.S3 = append(rep.S3, S3Row{Target: t.name})
	}
	for r := range cfg.rounds() {
		for _, t := range targets {
			out, err := runIn(ctx, l.w.App, 2*time.Minute,
				pinned(l.loadCPU, l.loadgen, "bulk", "-addr", t.addr, "-bytes", strconv.FormatInt(cfg.S3Bytes, 10), "-timeout", "90s")...)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			var res loadgen.BulkResult
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			l.log("S3 round %d %-20s %6.2f Gbit/s", r, t.name, res.Gbps)
			if cfg.measured(r) {
				row := rep.s3(t.name)
				row.Gbps = append(row.Gbps, res.Gbps)
			}
		}
	}
	return nil
}
