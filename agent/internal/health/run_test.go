package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRunReportsEveryCheckInOrderAndTheFirstFailure(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	_, c := fakeSystemctl(t, map[string]string{"app.service": "loaded active running success\n"}, "")
	spec := Spec{Timeout: 600 * time.Millisecond, Interval: MinInterval, Checks: []Check{
		{Name: "web", HTTP: &HTTPCheck{URL: srv.URL}},
		cmdCheck("migrations", 200*time.Millisecond, "/bin/sh", "-c", "echo pending >&2; exit 1"),
		{Name: "units", Units: &UnitsCheck{Units: []string{"app.service"}}},
		cmdCheck("also-bad", 200*time.Millisecond, "/bin/false"),
	}}
	if err := Validate(spec, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var lines []string
	start := time.Now()
	r := c.Run(ctx, spec, nil, func(l string) { lines = append(lines, l) })
	took := time.Since(start)
	if ctx.Err() != nil || took < spec.Timeout {
		t.Fatalf("Run took %s for a %s deadline", took, spec.Timeout)
	}
	if r.Passed || r.FirstFailure != "migrations" || len(r.Results) != 4 {
		t.Fatalf("report = %+v", r)
	}
	for i, want := range []struct {
		name   string
		passed bool
	}{{"web", true}, {"migrations", false}, {"units", true}, {"also-bad", false}} {
		if res := r.Results[i]; res.Name != want.name || res.Passed != want.passed {
			t.Errorf("result %d = %+v, want %s passed=%v", i, res, want.name, want.passed)
		}
	}
	if f := r.Failure(); !strings.Contains(f, "migrations") || !strings.Contains(f, "pending") {
		t.Errorf("Failure() = %q", f)
	}
	last := lines[len(lines)-2:]
	if !strings.HasPrefix(last[0], "health check migrations failed: ") || !strings.HasPrefix(last[1], "health check also-bad failed: ") {
		t.Errorf("the log does not end with the failures: %q", lines)
	}
}

func TestRunAllPassed(t *testing.T) {
	spec := Spec{Timeout: 5 * time.Second, Checks: []Check{cmdCheck("a", time.Second, "/bin/true"), cmdCheck("b", time.Second, "/bin/true")}}
	var lines []string
	r := Run(context.Background(), spec, nil, func(l string) { lines = append(lines, l) })
	if !r.Passed || r.FirstFailure != "" || r.Failure() != "" {
		t.Fatalf("report = %+v", r)
	}
	if !strings.HasPrefix(lines[len(lines)-1], "health: all 2 checks passed in ") {
		t.Fatalf("log = %q", lines)
	}
}

func TestRunWithoutChecksPasses(t *testing.T) {
	if r := Run(context.Background(), Spec{}, nil, nil); !r.Passed || len(r.Results) != 0 {
		t.Fatalf("report = %+v", r)
	}
}

func TestRunRefusesAnInvalidSpecWithoutRunningIt(t *testing.T) {
	marker := t.TempDir() + "/ran"
	spec := Spec{Timeout: time.Minute, Checks: []Check{
		cmdCheck("ok", time.Second, "/bin/sh", "-c", `touch "$0"`, marker),
		{Name: "ok"},
	}}
	r := Run(context.Background(), spec, nil, nil)
	if r.Passed || r.FirstFailure != "ok" || r.Results[0].Attempts != 0 || !strings.Contains(r.Results[0].Message, "invalid health checks") {
		t.Fatalf("report = %+v", r)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("the invalid spec ran a command: %v", err)
	}
}

// A failure whose message changes at every attempt must not log a line per attempt
// for the whole deadline.
func TestRunLogIsBoundedWhenTheFailureKeepsChanging(t *testing.T) {
	spec := Spec{Timeout: 3 * time.Second, Interval: MinInterval,
		Checks: []Check{cmdCheck("noisy", time.Second, "/bin/sh", "-c", `echo "attempt by $$"; exit 1`)}}
	var lines []string
	r := Run(context.Background(), spec, nil, func(l string) { lines = append(lines, l) })
	if r.Passed || r.Results[0].Attempts <= maxLoggedFailures+1 {
		t.Fatalf("report = %+v: too few attempts to tell", r)
	}
	failing := 0
	for _, l := range lines {
		if strings.Contains(l, "noisy failing") {
			failing++
		}
	}
	if failing != maxLoggedFailures {
		t.Fatalf("%d failure lines for %d attempts: %q", failing, r.Results[0].Attempts, lines)
	}
}

func TestRunStopsWhenItsContextIsCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	spec := Spec{Timeout: time.Hour, Interval: MinInterval, Checks: []Check{cmdCheck("hang", time.Hour, "/bin/sleep", "3600")}}
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan Report)
	go func() { done <- Run(ctx, spec, nil, nil) }()
	select {
	case r := <-done:
		if r.Passed || !strings.Contains(r.Results[0].Message, "stopped before passing") {
			t.Fatalf("report = %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop when its context was cancelled")
	}
}

func TestRunBoundsTheMessage(t *testing.T) {
	spec := Spec{Timeout: time.Second, Checks: []Check{cmdCheck("long", time.Second, "/bin/sh", "-c", `i=0; while [ $i -lt 3000 ]; do printf 'é'; i=$((i+1)); done; exit 1`)}}
	r := Run(context.Background(), spec, nil, nil)
	msg := r.Results[0].Message
	if r.Passed || len(msg) > maxMessage+200 || !utf8.ValidString(msg) || !strings.Contains(msg, "…") {
		t.Fatalf("message of %d bytes: %q", len(msg), msg)
	}
}
