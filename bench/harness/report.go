package harness

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report holds every measured value of a run; the tables show medians.
type Report struct {
	Config   Config `json:"-"`
	Machine  Machine
	Started  time.Time
	Finished time.Time

	S1       []S1Row
	S2       []S2Row
	S3       []S3Row
	S4       []S4Row
	S4Bypass struct{ Probes, Bypassed int }
	S5       []S5Row
	S6       *S6Result
	S7       []S7Row // s7.go
	Profiles []Profile
	Notes    []string
}

// Machine describes where the run happened, including other load.
type Machine struct {
	CPU        string
	Cores      int
	Kernel     string
	Go         string
	Tools      map[string]string
	LoadBefore string // load average
	LoadAfter  string
	BusyBefore string // CPU use over one second before the lab was built
	BusyAfter  string // and after it was removed
	// OtherLoad is, per scenario, how busy the machine was and how many
	// cores processes outside the lab used, sampled every second.
	OtherLoad []string
}

// S1Row is one target at one connection count.
type S1Row struct {
	Policy string
	Conns  int
	Target string
	RPS    []float64
	CPU10k []float64 // CPU-seconds of the proxy per 10k requests; empty for direct
	// Syscalls are the proxy's read- and write-type system calls per
	// request, Switches its context switches per request.
	Syscalls, Switches []float64
	// AllSyscalls are every system call of the proxy per request, counted
	// with perf (empty without it).
	AllSyscalls []float64
	Errors      int // socket errors and non-2xx answers, over all runs
}

// S2Row is one target at one rate.
type S2Row struct {
	Rate                float64
	Target              string
	P50, P99, P999, Max []float64 // µs
	Achieved            []float64 // answers/s
	Failed              int
}

// S3Row is one bulk-transfer target.
type S3Row struct {
	// Layout is "" for S3 as ever (bulk server and proxy share the server
	// core), "proxy-bound" for s3fast (the proxy has it alone).
	Layout string
	Target string
	Gbps   []float64
	// SenderPerGiB is the bulk server's CPU-seconds per GiB.
	SenderPerGiB []float64
	// The proxy's CPU-seconds per GiB moved and context switches (its
	// wake-ups) per MiB; empty for direct.
	CPUPerGiB, SwitchesPerMiB []float64
}

// S4Row is one DNS target.
type S4Row struct {
	Target     string
	QPS        []float64
	LatencyUs  []float64
	Lost       int
	Reruns     int // runs repeated at a lower rate because queries were lost
	NotNoerror int // answers with another rcode (a mesh query that reached unbound is REFUSED)
	// CPU time (user + system, from /proc) meshlet and unbound spent per
	// answered query, in µs: whatever the target, both are read; and
	// dnsperf's own, which shows when the load generator is the limit.
	MeshletUs, UnboundUs, DnsperfUs []float64
}

// S5Row is one failover event kind.
type S5Row struct {
	Event        string
	Failed       []int     // requests without a 2xx answer, per run
	AfterIndexMs []float64 // last segment reaching the instance minus Consul's index change
	DetectMs     []float64 // Consul's index change minus the event
	BackS        []float64 // seconds from passing again in Consul (and meshlet's state) to requests reaching it again
}

// S6Result is the footprint.
type S6Result struct {
	IdleRSS, LoadRSS []float64 // MB (10^6 bytes), per run
	// IdleExe, IdleAnon and IdleOther split the idle RSS: pages of the
	// executable, anonymous pages (heap, stacks, runtime), the rest.
	IdleExe, IdleAnon, IdleOther []float64
	IdleGoroutines               int // from the profiling build; -1 when not measured
	LoadGoroutines               int
}

// Profile is a CPU or allocation profile and its top entries.
type Profile struct {
	Name     string
	File     string
	Top      string
	Requests int // requests (queries) served while it was taken; 0: unknown
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func machineInfo() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Tools: map[string]string{}, LoadBefore: loadAvg(), BusyBefore: otherLoad(time.Second)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	for tool, args := range map[string][]string{
		"wrk": {"wrk", "-v"}, "nginx": {"nginx", "-v"}, "haproxy": {"haproxy", "-v"},
		"dnsperf": {"dnsperf", "-h"}, "unbound": {"unbound", "-V"},
	} {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		m.Tools[tool] = versionLine(string(out))
	}
	return m
}

func versionLine(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(line), "version") || strings.HasPrefix(line, "wrk ") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// otherLoad samples, for d, how busy the machine is and which processes
// use more than 3% of a core: other people's work on a shared machine.
// The harness calls it before building its lab and after removing it.
func otherLoad(d time.Duration) string {
	busy0, total0 := cpuTotals()
	p0 := procTimes()
	time.Sleep(d)
	busy1, total1 := cpuTotals()
	p1 := procTimes()
	var procs []string
	for pid, t1 := range p1 {
		t0, ok := p0[pid]
		if !ok {
			continue
		}
		if share := float64(t1.cpu-t0.cpu) / float64(d); share > 0.03 {
			procs = append(procs, fmt.Sprintf("%s %.0f%%", t1.comm, 100*share))
		}
	}
	slices.Sort(procs)
	pct := 0.0
	if total1 > total0 {
		pct = 100 * float64(busy1-busy0) / float64(total1-total0)
	}
	out := fmt.Sprintf("%.0f%% of all cores busy", pct)
	if len(procs) > 0 {
		out += " (" + strings.Join(procs, ", ") + ")"
	}
	return out
}

func cpuTotals() (busy, total int64) {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

type procTime struct {
	comm string
	cpu  time.Duration
}

func procTimes() map[int]procTime {
	m := map[int]procTime{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		m[pid] = procTime{procComm(pid), procCPU(pid)}
	}
	return m
}

func (r *Report) s1(policy string, conns int, target string) *S1Row {
	for i := range r.S1 {
		if r.S1[i].Policy == policy && r.S1[i].Conns == conns && r.S1[i].Target == target {
			return &r.S1[i]
		}
	}
	return nil
}

func (r *Report) s2(rate float64, target string) *S2Row {
	for i := range r.S2 {
		if r.S2[i].Rate == rate && r.S2[i].Target == target {
			return &r.S2[i]
		}
	}
	return nil
}

func (r *Report) s3(layout, target string) *S3Row {
	for i := range r.S3 {
		if r.S3[i].Layout == layout && r.S3[i].Target == target {
			return &r.S3[i]
		}
	}
	return nil
}

func (r *Report) s4(target string) *S4Row {
	for i := range r.S4 {
		if r.S4[i].Target == target {
			return &r.S4[i]
		}
	}
	return nil
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func medInts(v []int) float64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return median(f)
}

func sum(v []int) int {
	t := 0
	for _, x := range v {
		t += x
	}
	return t
}

func maxOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	m := v[0]
	for _, x := range v[1:] {
		m = max(m, x)
	}
	return m
}

// Print writes the report as Markdown tables.
func (r *Report) Print(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "# meshlet benchmarks, %s\n\n", r.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s, %d cores, Linux %s, %s. Load average before %s, after %s.\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.Machine.LoadBefore, r.Machine.LoadAfter)
	fmt.Fprintf(w, "Other load, sampled for a second before the lab was built: %s; after it was removed: %s.\n",
		r.Machine.BusyBefore, r.Machine.BusyAfter)
	if len(r.Machine.OtherLoad) > 0 {
		fmt.Fprintf(w, "While the scenarios ran (the lab itself uses both cores; \"other processes\" are those outside its namespaces):\n\n")
		for _, line := range r.Machine.OtherLoad {
			fmt.Fprintf(w, "- %s\n", line)
		}
		fmt.Fprintln(w)
	}
	warm := "a discarded warm-up round, then "
	if c.NoWarmup {
		warm = "no warm-up, "
	}
	fmt.Fprintf(w, "Method: %s%d measured rounds per scenario, targets alternating within each round; medians shown.\n", warm, c.Runs)
	if c.MeshletBin != "" {
		fmt.Fprintf(w, "meshlet measured: %s (not the tree's build; the profile scenario still uses the tree).\n", c.MeshletBin)
	}
	if len(c.MeshletEnv) > 0 {
		fmt.Fprintf(w, "meshlet's environment adds: %s.\n", strings.Join(c.MeshletEnv, " "))
	}
	fmt.Fprintln(w)

	if len(r.S1) > 0 {
		fmt.Fprintf(w, "## S1 HTTP/1.1 keep-alive, 1 KiB answers, 3 instances (wrk -t1, %v per run)\n\n", c.S1Duration)
		fmt.Fprintln(w, "| policy | conns | target | req/s | CPU-s per 10k req | read(2)/write(2) per req (Go proxies) | all syscalls per req (perf) | context switches per req | errors | req/s vs nginx | req/s vs HAProxy |")
		fmt.Fprintln(w, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, row := range r.S1 {
			cpu, sys, all, sw := "–", "–", "–", "–"
			if len(row.AllSyscalls) > 0 {
				all = fmt.Sprintf("%.2f", median(row.AllSyscalls))
			}
			if len(row.CPU10k) > 0 {
				cpu = fmt.Sprintf("%.3f", median(row.CPU10k))
				if row.Target == "meshlet" || row.Target == "meshlet-before" || row.Target == "go-minimal" {
					// nginx and HAProxy use recv/send, which /proc/PID/io
					// does not count: only Go's figure means something.
					sys = fmt.Sprintf("%.1f", median(row.Syscalls))
				}
				sw = fmt.Sprintf("%.2f", median(row.Switches))
			}
			vsN, vsH := "", ""
			if row.Target != "nginx" && row.Target != "haproxy" {
				if n := r.s1(row.Policy, row.Conns, "nginx"); n != nil {
					vsN = ratio(median(row.RPS), median(n.RPS))
				}
				if h := r.s1(row.Policy, row.Conns, "haproxy"); h != nil {
					vsH = ratio(median(row.RPS), median(h.RPS))
				}
			}
			fmt.Fprintf(w, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %d | %s | %s |\n", row.Policy, row.Conns, row.Target, median(row.RPS), cpu, sys, all, sw, row.Errors, vsN, vsH)
		}
		fmt.Fprintln(w)
	}
	if len(r.S2) > 0 {
		fmt.Fprintf(w, "## S2 constant rate, %d connections, %v per run: latency in µs (added = minus direct)\n\n", c.S2Conns, c.S2Duration)
		fmt.Fprintln(w, "| rate | target | achieved/s | p50 | p99 | p99.9 | max | added p50 | added p99 | added p99.9 | added max | failed |")
		fmt.Fprintln(w, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, row := range r.S2 {
			d := r.s2(row.Rate, "direct")
			add := func(v, base []float64) string {
				if d == nil || row.Target == "direct" {
					return "–"
				}
				return fmt.Sprintf("%+.0f", median(v)-median(base))
			}
			var a50, a99, a999, amax string = "–", "–", "–", "–"
			if d != nil {
				a50, a99, a999, amax = add(row.P50, d.P50), add(row.P99, d.P99), add(row.P999, d.P999), add(row.Max, d.Max)
			}
			fmt.Fprintf(w, "| %.0f | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %s | %s | %d |\n",
				row.Rate, row.Target, median(row.Achieved), median(row.P50), median(row.P99), median(row.P999), median(row.Max),
				a50, a99, a999, amax, row.Failed)
		}
		fmt.Fprintln(w)
	}
	if len(r.S3) > 0 {
		fmt.Fprintf(w, "## S3 raw TCP bulk transfer, %d MiB per run (instance → app)\n\n", c.S3Bytes>>20)
		fmt.Fprintln(w, "| layout | target | Gbit/s | vs direct | proxy CPU-s per GiB | proxy context switches per MiB | sender CPU-s per GiB |")
		fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
		for _, row := range r.S3 {
			vs := "–"
			if d := r.s3(row.Layout, "direct"); d != nil && row.Target != "direct" {
				vs = ratio(median(row.Gbps), median(d.Gbps))
			}
			cpu, sw := "–", "–"
			if len(row.CPUPerGiB) > 0 {
				cpu, sw = fmt.Sprintf("%.3f", median(row.CPUPerGiB)), fmt.Sprintf("%.2f", median(row.SwitchesPerMiB))
			}
			layout := row.Layout
			if layout == "" {
				layout = "shared core"
			}
			fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s | %.3f |\n", layout, row.Target, median(row.Gbps), vs, cpu, sw, median(row.SenderPerGiB))
		}
		fmt.Fprintln(w)
	}
	if len(r.S4) > 0 {
		fmt.Fprintf(w, "## S4 DNS, dnsperf (1 socket, 100 outstanding), %v per run\n\n", c.S4Duration)
		fmt.Fprintln(w, "| target | queries/s | avg latency µs | CPU µs per query: meshlet | unbound | dnsperf | lost | not NOERROR | reruns at a lower rate |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, row := range r.S4 {
			fmt.Fprintf(w, "| %s | %.0f | %.0f | %.2f | %.2f | %.2f | %d | %d | %d |\n", row.Target, median(row.QPS), median(row.LatencyUs),
				median(row.MeshletUs), median(row.UnboundUs), median(row.DnsperfUs), row.Lost, row.NotNoerror, row.Reruns)
		}
		if f, d := r.s4(s4Forwarded), r.s4(s4Direct); f != nil && d != nil {
			fmt.Fprintf(w, "\nForwarding through meshlet: %.1f%% fewer queries/s than asking unbound directly; %+.0f µs average latency.\n",
				100*(1-median(f.QPS)/median(d.QPS)), median(f.LatencyUs)-median(d.LatencyUs))
		}
		if f, d := r.s4(s4FastForwarded), r.s4(s4FastDirect); f != nil && d != nil {
			fmt.Fprintf(w, "\nWith unbound on the load core (s4fast): forwarding through meshlet %.1f%% fewer queries/s than asking unbound directly; %+.0f µs average latency.\n",
				100*(1-median(f.QPS)/median(d.QPS)), median(f.LatencyUs)-median(d.LatencyUs))
		}
		if f, d := r.s4(s4ForwardedFixed), r.s4(s4DirectFixed); f != nil && d != nil {
			fmt.Fprintf(w, "\nAt %.0f q/s: forwarding through meshlet adds %+.0f µs to the average latency of asking unbound directly.\n",
				c.S4FixedRate, median(f.LatencyUs)-median(d.LatencyUs))
		}
		if b := r.S4Bypass; b.Probes > 0 {
			fmt.Fprintf(w, "\nLookups of web.local from ephemeral ports right after the forwarding runs that got no VIP (they matched a conntrack entry of one of meshlet's forwarding sockets and went past the redirect to unbound): %d of %d.\n",
				b.Bypassed, b.Probes)
		}
		fmt.Fprintln(w)
	}
	if len(r.S5) > 0 {
		fmt.Fprintf(w, "## S5 failover under %.0f req/s (16 connections), one event per run\n\n", c.S5Rate)
		fmt.Fprintln(w, "| event | runs | failed requests (all runs) | ms from Consul's index change to the last request at the instance: median / worst | ms from the event to the index change (Consul's check) | s until it gets requests again once passing: median / worst |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
		for _, row := range r.S5 {
			fmt.Fprintf(w, "| %s | %d | %d | %.0f / %.0f | %.0f | %.1f / %.1f |\n", row.Event, len(row.Failed), sum(row.Failed), median(row.AfterIndexMs), maxOf(row.AfterIndexMs), median(row.DetectMs), median(row.BackS), maxOf(row.BackS))
		}
		fmt.Fprintln(w, "\nNegative: the last request came before Consul's index changed (meshlet's passive health, or the check, was faster).")
		fmt.Fprintln(w)
	}
	if s := r.S6; s != nil {
		fmt.Fprintf(w, "## S6 footprint, meshlet watching 10 services × 10 instances (GOMAXPROCS=1)\n\n")
		fmt.Fprintln(w, "| state | RSS MB median / max | goroutines |")
		fmt.Fprintln(w, "| --- | ---: | ---: |")
		g := func(n int) string {
			if n < 0 {
				return "–"
			}
			return fmt.Sprint(n)
		}
		rss := func(v []float64) string {
			if len(v) == 0 {
				return "–"
			}
			return fmt.Sprintf("%.1f / %.1f", median(v), maxOf(v))
		}
		fmt.Fprintf(w, "| idle | %s | %s |\n", rss(s.IdleRSS), g(s.IdleGoroutines))
		fmt.Fprintf(w, "| %.0f req/s over %d connections | %s | %s |\n", c.S6Rate, c.S6Conns, rss(s.LoadRSS), g(s.LoadGoroutines))
		if len(s.IdleExe) > 0 {
			fmt.Fprintf(w, "\nIdle RSS (medians): %.1f MB pages of the executable, %.1f MB anonymous (Go heap, stacks, runtime), %.1f MB other.\n",
				median(s.IdleExe), median(s.IdleAnon), median(s.IdleOther))
		}
		fmt.Fprintln(w)
	}
	r.printS7(w)
	r.printTargets(w)
	for _, p := range r.Profiles {
		fmt.Fprintf(w, "## Profile: %s (%s)\n\n", p.Name, p.File)
		if p.Requests > 0 {
			fmt.Fprintf(w, "%d requests while it was taken.\n\n", p.Requests)
		}
		fmt.Fprintf(w, "```\n%s```\n\n", p.Top)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "## Notes")
		fmt.Fprintln(w)
		for _, n := range r.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
}

// printTargets compares the medians with the targets.
func (r *Report) printTargets(w io.Writer) {
	type line struct {
		what, got, want string
		ok              bool
	}
	var lines []line
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "**no**"
	}
	var policies []string
	for _, row := range r.S1 {
		if !slices.Contains(policies, row.Policy) {
			policies = append(policies, row.Policy)
		}
	}
	for _, policy := range policies {
		conns := r.Config.S1Conns
		if policy == policyProxyBound {
			conns = r.Config.S1FastConns
		}
		for _, conns := range conns {
			m, n, h := r.s1(policy, conns, "meshlet"), r.s1(policy, conns, "nginx"), r.s1(policy, conns, "haproxy")
			if m == nil || n == nil || h == nil {
				continue
			}
			mr, nr, hr := median(m.RPS), median(n.RPS), median(h.RPS)
			lines = append(lines,
				line{fmt.Sprintf("S1 %s req/s vs nginx, %d conns", policy, conns), ratio(mr, nr), "≥ 1.0×", mr >= nr},
				line{fmt.Sprintf("S1 %s req/s vs HAProxy, %d conns", policy, conns), ratio(mr, hr), "≥ 0.8×", mr >= 0.8*hr})
			mc, nc, hc := median(m.CPU10k), median(n.CPU10k), median(h.CPU10k)
			if mc > 0 {
				lines = append(lines,
					line{fmt.Sprintf("S1 %s CPU per request vs nginx, %d conns", policy, conns), ratio(mc, nc), "≤ 1.0×", mc <= nc},
					line{fmt.Sprintf("S1 %s CPU per request vs HAProxy, %d conns", policy, conns), ratio(mc, hc), "≤ 1.25×", mc <= 1.25*hc})
			}
		}
	}
	if m, d := r.s2(1000, "meshlet"), r.s2(1000, "direct"); m != nil && d != nil {
		a50, a99 := median(m.P50)-median(d.P50), median(m.P99)-median(d.P99)
		lines = append(lines,
			line{"S2 added p50 at 1k req/s", fmt.Sprintf("%.0f µs", a50), "≤ 50 µs", a50 <= 50},
			line{"S2 added p99 at 1k req/s", fmt.Sprintf("%.0f µs", a99), "≤ 250 µs", a99 <= 250})
	}
	for _, layout := range []string{"", policyProxyBound} {
		if m, d := r.s3(layout, "meshlet"), r.s3(layout, "direct"); m != nil && d != nil {
			what := "S3 bulk TCP vs direct"
			if layout != "" {
				what += ", " + layout
			}
			lines = append(lines, line{what, ratio(median(m.Gbps), median(d.Gbps)), "≥ 0.9×", median(m.Gbps) >= 0.9*median(d.Gbps)})
		}
	}
	if m := r.s4(s4Mesh); m != nil {
		q := median(m.QPS)
		lines = append(lines, line{"S4 mesh names, q/s at zero loss on one core", fmt.Sprintf("%.0f", q), "≥ 150000", q >= 150000 && m.Lost == 0 && m.NotNoerror == 0})
	}
	if f, d := r.s4(s4Forwarded), r.s4(s4Direct); f != nil && d != nil {
		slower := 1 - median(f.QPS)/median(d.QPS)
		lines = append(lines, line{"S4 forwarding vs asking unbound directly", fmt.Sprintf("%.1f%% slower", 100*slower), "≤ 10% slower", slower <= 0.10})
	}
	if f, d := r.s4(s4FastForwarded), r.s4(s4FastDirect); f != nil && d != nil {
		slower := 1 - median(f.QPS)/median(d.QPS)
		lines = append(lines, line{"S4 forwarding vs asking unbound directly, unbound on the load core", fmt.Sprintf("%.1f%% slower", 100*slower), "≤ 10% slower", slower <= 0.10})
	}
	for _, row := range r.S5 {
		lines = append(lines,
			line{"S5 " + row.Event + ": failed requests", fmt.Sprint(sum(row.Failed)), "0", sum(row.Failed) == 0},
			line{"S5 " + row.Event + ": index change → last request (worst run)", fmt.Sprintf("%.0f ms", maxOf(row.AfterIndexMs)), "≤ 50 ms", maxOf(row.AfterIndexMs) <= 50})
	}
	if s := r.S6; s != nil && len(s.IdleRSS) > 0 {
		lines = append(lines,
			line{"S6 idle RSS (worst run)", fmt.Sprintf("%.1f MB", maxOf(s.IdleRSS)), "≤ 12 MB", maxOf(s.IdleRSS) <= 12},
			line{"S6 RSS under load (worst run)", fmt.Sprintf("%.1f MB", maxOf(s.LoadRSS)), "≤ 25 MB", maxOf(s.LoadRSS) <= 25})
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w, "## Against the targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| measure | meshlet | target | met |")
	fmt.Fprintln(w, "| --- | ---: | ---: | --- |")
	for _, l := range lines {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", l.what, l.got, l.want, yes(l.ok))
	}
	fmt.Fprintln(w)
}
