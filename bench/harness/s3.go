package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/meshlet/meshlet/bench/loadgen"
)

// bulkTarget is one way for the app to reach a bulk server.
type bulkTarget struct {
	name, addr, bin string
	pid             func() int // the proxy; nil for direct
}

// runS3 measures a raw TCP bulk transfer from the bulk server in the first
// instance to the app: directly, through meshlet (bulk.local: DNS, the
// redirect, meshlet's TCP proxy, which splices) and through HAProxy in
// mode tcp. The bulk server shares the server core with the proxy.
func runS3(ctx context.Context, l *lab, rep *Report) error {
	vip, err := l.resolve(ctx, "bulk.local")
	if err != nil {
		return fmt.Errorf("resolving bulk.local: %w", err)
	}
	if err := l.waitEndpoints(ctx, 1, "bulk"); err != nil {
		return err
	}
	targets := []bulkTarget{
		{"direct", l.bulkAddr().String(), "", nil},
		{"meshlet", fmt.Sprintf("%s:%d", vip, bulkPort), l.meshletBin(), l.meshletPid},
		{"haproxy (mode tcp)", fmt.Sprintf("127.0.0.1:%d", haproxyTCPPort), "", func() int { return l.haproxy.Cmd.Process.Pid }},
	}
	if b := l.cfg.MeshletBefore; b != "" {
		targets = append(targets, bulkTarget{"meshlet-before", targets[1].addr, b, l.meshletPid})
	}
	return l.runBulk(ctx, rep, "", l.bulk.Cmd.Process.Pid, targets)
}

// runBulk runs the rounds of a bulk-transfer layout over targets; sender
// is the bulk server's pid, whose CPU per GiB is recorded beside the
// proxy's.
func (l *lab) runBulk(ctx context.Context, rep *Report, layout string, sender int, targets []bulkTarget) error {
	cfg := l.cfg
	for _, t := range targets {
		rep.S3 = append(rep.S3, S3Row{Layout: layout, Target: t.name})
	}
	for r := range cfg.rounds() {
		for _, t := range targets {
			if t.bin != "" {
				if err := l.useMeshlet(ctx, t.bin); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
			}
			var cpu0 time.Duration
			var sw0 int64
			if t.pid != nil {
				cpu0, sw0 = treeCPU(t.pid()), procSwitches(t.pid())
			}
			send0 := procCPU(sender)
			out, err := runIn(ctx, l.w.App, 2*time.Minute,
				pinned(l.loadCPU, l.loadgen, "bulk", "-addr", t.addr, "-bytes", strconv.FormatInt(cfg.S3Bytes, 10), "-timeout", "90s")...)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			var res loadgen.BulkResult
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			// Per GiB moved: the proxy's CPU and the sender's; per MiB the
			// proxy's context switches, which are its wake-ups.
			var cpuGiB, sendGiB, swMiB float64
			if res.Bytes > 0 {
				gib := float64(res.Bytes) / (1 << 30)
				sendGiB = (procCPU(sender) - send0).Seconds() / gib
				if t.pid != nil {
					cpuGiB = (treeCPU(t.pid()) - cpu0).Seconds() / gib
					swMiB = float64(procSwitches(t.pid())-sw0) / gib / 1024
				}
			}
			l.log("S3%s round %d %-20s %6.2f Gbit/s  proxy %.3f CPU-s/GiB, %.2f switches/MiB  sender %.3f CPU-s/GiB",
				layout, r, t.name, res.Gbps, cpuGiB, swMiB, sendGiB)
			if cfg.measured(r) {
				row := rep.s3(layout, t.name)
				row.Gbps = append(row.Gbps, res.Gbps)
				row.SenderPerGiB = append(row.SenderPerGiB, sendGiB)
				if t.pid != nil {
					row.CPUPerGiB = append(row.CPUPerGiB, cpuGiB)
					row.SwitchesPerMiB = append(row.SwitchesPerMiB, swMiB)
				}
			}
		}
	}
	return nil
}
