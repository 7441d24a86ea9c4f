package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// loadSampler notes, once a second while the scenarios run, how busy the
// machine is and how much CPU went to processes that are not the lab's
// (those outside its network namespaces, the harness excepted): other
// people's work on a shared machine, which the figures must be read with.
type loadSampler struct {
	ours map[uint64]bool // network namespaces of the lab
	self int

	mu       sync.Mutex
	scenario string
	stats    map[string]*loadStats
	order    []string

	stop chan struct{}
	done chan struct{}
}

type loadStats struct {
	wall        time.Duration
	busy, total int64                    // /proc/stat jiffies
	others      map[string]time.Duration // command → CPU
}

func nsInode(path string) (uint64, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ino, true
}

func startLoadSampler(l *lab) *loadSampler {
	s := &loadSampler{ours: map[uint64]bool{}, self: os.Getpid(), stats: map[string]*loadStats{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, h := range l.w.Lab.Hosts() {
		if ino, ok := nsInode(filepath.Join("/run/netns", h.NS)); ok {
			s.ours[ino] = true
		}
	}
	go s.loop()
	return s
}

// setScenario starts attributing samples to name.
func (s *loadSampler) setScenario(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scenario = name
	if s.stats[name] == nil {
		s.stats[name] = &loadStats{others: map[string]time.Duration{}}
		s.order = append(s.order, name)
	}
}

func (s *loadSampler) loop() {
	defer close(s.done)
	prev := procTimes()
	prevBusy, prevTotal := cpuTotals()
	last := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		cur := procTimes()
		busy, total := cpuTotals()
		s.mu.Lock()
		st := s.stats[s.scenario]
		if st != nil {
			st.wall += now.Sub(last)
			st.busy += busy - prevBusy
			st.total += total - prevTotal
			for pid, t := range cur {
				p, ok := prev[pid]
				if !ok || pid == s.self || t.cpu <= p.cpu {
					continue
				}
				if ino, ok := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); ok && s.ours[ino] {
					continue
				}
				st.others[t.comm] += t.cpu - p.cpu
			}
		}
		s.mu.Unlock()
		prev, prevBusy, prevTotal, last = cur, busy, total, now
	}
}

// report stops the sampler and returns one line per scenario.
func (s *loadSampler) report() []string {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	for _, name := range s.order {
		st := s.stats[name]
		if st.wall <= 0 {
			continue
		}
		var sum time.Duration
		var top []string
		type kv struct {
			k string
			v time.Duration
		}
		var all []kv
		for k, v := range st.others {
			sum += v
			all = append(all, kv{k, v})
		}
		slices.SortFunc(all, func(a, b kv) int { return int(b.v - a.v) })
		for _, e := range all[:min(len(all), 5)] {
			if e.v*100 >= st.wall { // at least 1% of a core
				top = append(top, fmt.Sprintf("%s %.2f", e.k, e.v.Seconds()/st.wall.Seconds()))
			}
		}
		busy := 0.0
		if st.total > 0 {
			busy = 100 * float64(st.busy) / float64(st.total)
		}
		line := fmt.Sprintf("%s (%s): machine %.0f%% busy; other processes %.2f cores", name, st.wall.Round(time.Second), busy, sum.Seconds()/st.wall.Seconds())
		if len(top) > 0 {
			line += " (" + strings.Join(top, ", ") + ")"
		}
		lines = append(lines, line)
	}
	return lines
}
