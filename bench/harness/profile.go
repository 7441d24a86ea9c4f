package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// fetchDebug gets a path of the profiling build's pprof server, from the
// app host where it listens on loopback.
func (l *lab) fetchDebug(ctx context.Context, path string, limit time.Duration) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pprofAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := l.w.App.HTTPClient(limit).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %d: %s", path, resp.StatusCode, b)
	}
	return b, nil
}

// goroutines reads the goroutine count of the profiling build.
func (l *lab) goroutines(ctx context.Context) (int, error) {
	b, err := l.fetchDebug(ctx, "/debug/pprof/goroutine?debug=1", 5*time.Second)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		return 0, fmt.Errorf("goroutine profile starts %q", first)
	}
	return n, nil
}

// memStats reads a few runtime.MemStats fields of the profiling build
// (from the heap profile's text form), in MB.
func (l *lab) memStats(ctx context.Context) (string, error) {
	b, err := l.fetchDebug(ctx, "/debug/pprof/heap?debug=1", 5*time.Second)
	if err != nil {
		return "", err
	}
	want := []string{"HeapInuse", "HeapIdle", "HeapReleased", "StackInuse", "MSpanInuse", "GCSys", "OtherSys", "Sys", "NumGC"}
	got := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = ")
		if ok {
			got[k] = v
		}
	}
	var parts []string
	for _, k := range want {
		v, ok := got[k]
		if !ok {
			continue
		}
		if n, err := strconv.ParseFloat(v, 64); err == nil && k != "NumGC" {
			v = fmt.Sprintf("%.1f MB", n/1e6)
		}
		parts = append(parts, k+" "+v)
	}
	return strings.Join(parts, ", "), nil
}

// profileDuring records a profile of kind ("profile" for CPU, "allocs")
// for d while load runs, saves it and returns its top entries.
// load returns how many requests or queries it made (0: unknown), to
// report the profile per request.
func (l *lab) profileDuring(ctx context.Context, name, kind, sampleIndex string, d time.Duration, load func() (int, error)) (Profile, error) {
	type got struct {
		b   []byte
		err error
	}
	ch := make(chan got, 1)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	go func() {
		b, err := l.fetchDebug(ctx, fmt.Sprintf("/debug/pprof/%s?seconds=%d", kind, secs), time.Duration(secs)*time.Second+30*time.Second)
		ch <- got{b, err}
	}()
	n, loadErr := load()
	g := <-ch
	if loadErr != nil {
		return Profile{}, loadErr
	}
	if g.err != nil {
		return Profile{}, g.err
	}
	dir := filepath.Join(l.cfg.OutDir, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Profile{}, err
	}
	file := filepath.Join(dir, name+".pb.gz")
	if err := os.WriteFile(file, g.b, 0o644); err != nil {
		return Profile{}, err
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=25"}
	if sampleIndex != "" {
		args = append(args, "-sample_index="+sampleIndex)
	}
	args = append(args, l.meshletBench, file)
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		return Profile{}, fmt.Errorf("go tool pprof: %w: %s", err, out)
	}
	return Profile{Name: name, File: file, Top: string(out), Requests: n}, nil
}

// runProfile restarts meshlet as the profiling build (the same agent with
// pprof on a side port) and records: goroutines idle and under S6's load,
// a CPU and an allocation profile under S1's load (wrk, most connections),
// and a CPU profile under S4's mesh-name load.
func runProfile(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	if err := l.restartMeshlet(ctx, true); err != nil {
		return err
	}
	if err := l.watchFootprintServices(ctx); err != nil {
		return err
	}
	if _, err := l.resolve(ctx, "bulk.local"); err != nil {
		return err
	}
	time.Sleep(cfg.S6Settle)
	idle, err := l.goroutines(ctx)
	if err != nil {
		return err
	}
	idleMem, err := l.memStats(ctx)
	if err != nil {
		return err
	}
	rep.note("Profiling build, idle with the footprint services watched: RSS %.1f MB; Go runtime: %s.", mb(procRSS(l.meshletPid())), idleMem)
	wait := l.startLoad(ctx, loadRun{url: l.meshletTarget("/payload").url, host: "web.local", rate: cfg.S6Rate, conns: cfg.S6Conns, duration: cfg.S6Duration})
	time.Sleep(cfg.S6Duration * 3 / 4)
	loaded, gerr := l.goroutines(ctx)
	if gerr == nil {
		if m, err := l.memStats(ctx); err == nil {
			rep.note("Profiling build under %.0f req/s over %d connections: RSS %.1f MB; Go runtime: %s.", cfg.S6Rate, cfg.S6Conns, mb(procRSS(l.meshletPid())), m)
		}
	}
	if _, err := wait(); err != nil {
		return err
	}
	if gerr != nil {
		return gerr
	}
	if rep.S6 == nil {
		rep.S6 = &S6Result{}
	}
	rep.S6.IdleGoroutines, rep.S6.LoadGoroutines = idle, loaded
	l.log("profile: goroutines idle %d, under load %d", idle, loaded)

	conns := cfg.S1Conns[len(cfg.S1Conns)-1]
	t := l.meshletTarget("/payload")
	s1load := func() (int, error) {
		res, err := l.wrk(ctx, conns, cfg.ProfileFor, t)
		return res.requests, err
	}
	// A short wrk first, so the profiles see a warm pool.
	if _, err := l.wrk(ctx, conns, time.Second, t); err != nil {
		return err
	}
	p, err := l.profileDuring(ctx, fmt.Sprintf("s1-cpu-c%d", conns), "profile", "", cfg.ProfileFor, s1load)
	if err != nil {
		return err
	}
	rep.Profiles = append(rep.Profiles, p)
	p, err = l.profileDuring(ctx, fmt.Sprintf("s1-allocs-c%d", conns), "allocs", "alloc_space", cfg.ProfileFor, s1load)
	if err != nil {
		return err
	}
	rep.Profiles = append(rep.Profiles, p)
	meshFile := filepath.Join(l.dir, "dns-mesh.txt")
	if _, err := os.Stat(meshFile); err != nil {
		return fmt.Errorf("the S4 profile needs S4's query file: run s4 too")
	}
	p, err = l.profileDuring(ctx, "s4-cpu-mesh", "profile", "", cfg.ProfileFor, func() (int, error) {
		res, err := l.dnsperf(ctx, 53, dnsperfMeshPort, meshFile, cfg.ProfileFor, 0)
		return int(res.qps * cfg.ProfileFor.Seconds()), err
	})
	if err != nil {
		return err
	}
	rep.Profiles = append(rep.Profiles, p)
	outsideFile := filepath.Join(l.dir, "dns-outside.txt")
	p, err = l.profileDuring(ctx, "s4-cpu-forward", "profile", "", cfg.ProfileFor, func() (int, error) {
		res, err := l.dnsperf(ctx, 53, dnsperfOutsidePort, outsideFile, cfg.ProfileFor, 0)
		return int(res.qps * cfg.ProfileFor.Seconds()), err
	})
	if err != nil {
		return err
	}
	rep.Profiles = append(rep.Profiles, p)
	return nil
}
