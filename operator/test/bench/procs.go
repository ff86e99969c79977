package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// buildBinaries builds the real binaries the benchmarks run, into dir.
func buildBinaries(root, dir string) error {
	cmd := exec.Command("go", "build", "-o", dir+"/", "./operator/cmd/nio-operator", "./agent/cmd/nio-agent", "./agent/cmd/nio-fleet-sim")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	return nil
}

// process is a child the benchmark started; it dies with the benchmark (Pdeathsig)
// and is stopped by its PID.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

func startProcess(name, logPath string, env []string, argv ...string) (*process, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan error, 1), log: lf}
	go func() { p.done <- cmd.Wait(); lf.Close() }()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports an early exit of the process.
func (p *process) exited() error {
	select {
	case err := <-p.done:
		p.done <- err
		return fmt.Errorf("%s exited: %v (see %s)", p.name, err, p.log.Name())
	default:
		return nil
	}
}

// stop sends SIGTERM and waits; SIGKILL after the grace period.
func (p *process) stop(grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// procUsage is what /proc says about a process.
type procUsage struct {
	// PeakRSSMiB is VmHWM; RSSMiB is VmRSS.
	PeakRSSMiB float64 `json:"peakRSSMiB"`
	RSSMiB     float64 `json:"rssMiB"`
	// CPUSeconds is utime+stime.
	CPUSeconds float64 `json:"cpuSeconds"`
}

// clockTicks is USER_HZ, 100 on every Linux the benchmark targets.
const clockTicks = 100

func readProc(pid int) (procUsage, error) {
	var u procUsage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[0], 64)
		switch k {
		case "VmHWM":
			u.PeakRSSMiB = kb / 1024
		case "VmRSS":
			u.RSSMiB = kb / 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the command name (which may hold spaces) start at the state: utime
	// and stime are fields 14 and 15 of the line, 12 and 13 after ") ".
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat)[i+1:])
	if len(f) < 13 {
		return u, errors.New("short /proc stat line")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	u.CPUSeconds = (ut + st) / clockTicks
	return u, nil
}

// scrape fetches a Prometheus text endpoint and returns, per metric name, the sum
// over all its series.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		j := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[j+1:], 64)
		if err != nil {
			continue
		}
		out[name] += v
		// Keep series by labels too, for the few the benchmark reads by label.
		if k := strings.IndexByte(line, '}'); k > 0 && (strings.Contains(name, "reconcile_total") || name == "rest_client_requests_total") {
			out[line[:k+1]] += v
		}
	}
	return out, sc.Err()
}

// waitFile waits until path exists (a child's ready file), the child exits, or ctx
// ends.
func waitFile(ctx context.Context, path string, p *process) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if err := p.exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", filepath.Base(path), ctx.Err())
		case <-t.C:
		}
	}
}

// waitHTTP waits until url answers 200.
func waitHTTP(ctx context.Context, url string, p *process) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := p.exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", url, ctx.Err())
		case <-t.C:
		}
	}
}

// childCPU returns the CPU seconds of this process's children by command name
// (kube-apiserver and etcd, which envtest starts; the operator and the simulator).
func childCPU() map[string]float64 {
	out := map[string]float64{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		if u, err := readProc(pid); err == nil {
			out[s[open+1:end]] += u.CPUSeconds
		}
	}
	return out
}

// rssSampler follows a process's RSS every 250 ms until stopped: the peak within
// one round (VmHWM is the peak of the whole run).
type rssSampler struct {
	stop chan struct{}
	done chan float64
}

func sampleRSS(pid int) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan float64, 1)}
	go func() {
		peak := 0.0
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if u, err := readProc(pid); err == nil && u.RSSMiB > peak {
				peak = u.RSSMiB
			}
			select {
			case <-t.C:
			case <-s.stop:
				s.done <- peak
				return
			}
		}
	}()
	return s
}

// peak stops the sampler and returns the highest RSS it saw, in MiB.
func (s *rssSampler) peak() float64 {
	close(s.stop)
	return <-s.done
}
