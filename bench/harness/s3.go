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
	type target struct {
		name, addr, bin string
		pid             func() int // the proxy; nil for direct
	}
	targets := []target{
		{"direct", l.bulkAddr().String(), "", nil},
		{"meshlet", fmt.Sprintf("%s:%d", vip, bulkPort), l.meshletBin(), l.meshletPid},
		{"haproxy (mode tcp)", fmt.Sprintf("127.0.0.1:%d", haproxyTCPPort), "", func() int { return l.haproxy.Cmd.Process.Pid }},
	}
	if b := l.cfg.MeshletBefore; b != "" {
		targets = append(targets, target{"meshlet-before", targets[1].addr, b, l.meshletPid})
	}
	for _, t := range targets {
		rep.S3 = append(rep.S3, S3Row{Target: t.name})
	}
	for r := range cfg.rounds() {
		for _, t := range targets {
			if t.bin != "" {
				if err := l.useMeshlet(ctx, t.bin); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
			}
			var cpu0 time.Duration
			var sys0, sw0 int64
			if t.pid != nil {
				cpu0, sys0, sw0 = treeCPU(t.pid()), procSyscalls(t.pid()), procSwitches(t.pid())
			}
			out, err := runIn(ctx, l.w.App, 2*time.Minute,
				pinned(l.loadCPU, l.loadgen, "bulk", "-addr", t.addr, "-bytes", strconv.FormatInt(cfg.S3Bytes, 10), "-timeout", "90s")...)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			var res loadgen.BulkResult
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			// Per MiB moved: the proxy's CPU, its read/write-type calls
			// (splice counts as neither: see BENCHMARKS.md) and its
			// context switches, which are its wake-ups.
			var cpuGiB, sysMiB, swMiB float64
			if t.pid != nil && res.Bytes > 0 {
				mib := float64(res.Bytes) / (1 << 20)
				cpuGiB = (treeCPU(t.pid()) - cpu0).Seconds() / mib * 1024
				sysMiB = float64(procSyscalls(t.pid())-sys0) / mib
				swMiB = float64(procSwitches(t.pid())-sw0) / mib
			}
			l.log("S3 round %d %-20s %6.2f Gbit/s  %.3f CPU-s/GiB  %.2f read/write per MiB  %.2f switches per MiB", r, t.name, res.Gbps, cpuGiB, sysMiB, swMiB)
			if cfg.measured(r) {
				row := rep.s3(t.name)
				row.Gbps = append(row.Gbps, res.Gbps)
				if t.pid != nil {
					row.CPUPerGiB = append(row.CPUPerGiB, cpuGiB)
					row.SwitchesPerMiB = append(row.SwitchesPerMiB, swMiB)
				}
			}
		}
	}
	return nil
}
