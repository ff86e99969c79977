package health

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeSystemctl copies testdata/systemctl into a directory of its own with the
// given unit states (see the script) and failed-units listing.
func fakeSystemctl(t *testing.T, units map[string]string, failed string) (dir string, c *Checker) {
	t.Helper()
	dir = t.TempDir()
	script, err := os.ReadFile("testdata/systemctl")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("systemctl", string(script), 0o755)
	write("failed", failed, 0o644)
	for u, states := range units {
		write(filepath.Join("units", u), states, 0o644)
	}
	return dir, &Checker{Systemctl: filepath.Join(dir, "systemctl")}
}

func unitsSpec(timeout time.Duration, u UnitsCheck) Spec {
	return Spec{Timeout: timeout, Interval: MinInterval, Checks: []Check{{Name: "units", Units: &u}}}
}

func runUnits(t *testing.T, c *Checker, spec Spec, baseline FailedUnits) Report {
	t.Helper()
	if err := Validate(spec, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), spec.Timeout+10*time.Second)
	defer cancel()
	r := c.Run(ctx, spec, baseline, nil)
	if ctx.Err() != nil {
		t.Fatalf("Run outlived its %s deadline by far", spec.Timeout)
	}
	return r
}

func TestUnitsActivePass(t *testing.T) {
	dir, c := fakeSystemctl(t, map[string]string{
		"nginx.service": "loaded active running success\n",
		"sshd.service":  "loaded reloading reload success\n",
	}, "")
	r := runUnits(t, c, unitsSpec(5*time.Second, UnitsCheck{Units: []string{"nginx.service", "sshd"}}), nil)
	if !r.Passed || r.Results[0].Attempts != 1 || r.Results[0].Message != "active: nginx.service, sshd" {
		t.Fatalf("report = %+v", r)
	}
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	if !strings.Contains(string(calls), "show --no-pager --property=Id,LoadState,ActiveState,SubState,Result -- nginx.service sshd") {
		t.Fatalf("systemctl calls: %s", calls)
	}
}

func TestUnitsInactiveOrMissingFail(t *testing.T) {
	_, c := fakeSystemctl(t, map[string]string{
		"nginx.service": "loaded active running success\n",
		"app.service":   "loaded failed failed exit-code\n",
		"db.service":    "loaded inactive dead success\n",
	}, "")
	r := runUnits(t, c, unitsSpec(time.Second, UnitsCheck{Units: []string{"nginx.service", "app.service", "db.service", "ghost.service"}}), nil)
	msg := r.Results[0].Message
	if r.Passed || r.Results[0].Attempts < 2 {
		t.Fatalf("report = %+v", r)
	}
	for _, want := range []string{"app.service is failed, result exit-code", "db.service is inactive (dead)", "ghost.service is not found"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "nginx") {
		t.Errorf("message %q names the active unit", msg)
	}
}

func TestUnitComingUpPassesOnceActive(t *testing.T) {
	_, c := fakeSystemctl(t, map[string]string{
		"app.service": "loaded activating start success\nloaded activating start success\nloaded active running success\n",
	}, "")
	r := runUnits(t, c, unitsSpec(10*time.Second, UnitsCheck{Units: []string{"app.service"}}), nil)
	if !r.Passed || r.Results[0].Attempts != 3 {
		t.Fatalf("report = %+v", r)
	}
}

func TestNoNewFailuresIgnoresWhatFailedBefore(t *testing.T) {
	failed := "old.service loaded failed failed Broken since last week\n"
	_, c := fakeSystemctl(t, nil, failed)
	baseline, err := c.Baseline(context.Background())
	if err != nil || !slices.Equal(baseline, FailedUnits{"old.service"}) {
		t.Fatalf("baseline = %q, %v", baseline, err)
	}
	r := runUnits(t, c, unitsSpec(5*time.Second, UnitsCheck{NoNewFailures: true}), baseline)
	if !r.Passed || r.Results[0].Message != "no unit failed since activation" {
		t.Fatalf("report = %+v", r)
	}
}

func TestNoNewFailuresFailsOnANewlyFailedUnit(t *testing.T) {
	dir, c := fakeSystemctl(t, map[string]string{"app.service": "loaded active running success\n"},
		"old.service loaded failed failed Broken since last week\n")
	baseline, err := c.Baseline(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Activation breaks a unit.
	if err := os.WriteFile(filepath.Join(dir, "failed"), []byte(
		"old.service loaded failed failed Broken since last week\nnew.mount loaded failed failed New mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runUnits(t, c, unitsSpec(300*time.Millisecond, UnitsCheck{Units: []string{"app.service"}, NoNewFailures: true}), baseline)
	msg := r.Results[0].Message
	if r.Passed || !strings.Contains(msg, "failed since activation: new.mount") || strings.Contains(msg, "old.service") {
		t.Fatalf("report = %+v", r)
	}
	// Without a baseline every failed unit counts as new.
	r = runUnits(t, c, unitsSpec(300*time.Millisecond, UnitsCheck{NoNewFailures: true}), nil)
	if msg := r.Results[0].Message; r.Passed || !strings.Contains(msg, "new.mount") || !strings.Contains(msg, "old.service") {
		t.Fatalf("report = %+v", r)
	}
}

func TestUnitsSystemctlErrorFailsWithItsMessage(t *testing.T) {
	dir, c := fakeSystemctl(t, nil, "")
	if err := os.WriteFile(filepath.Join(dir, "broken"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Baseline(context.Background()); err == nil || !strings.Contains(err.Error(), "Failed to connect to bus") {
		t.Fatalf("baseline error = %v", err)
	}
	r := runUnits(t, c, unitsSpec(300*time.Millisecond, UnitsCheck{Units: []string{"app.service"}}), nil)
	if r.Passed || !strings.Contains(r.Results[0].Message, "Failed to connect to bus") {
		t.Fatalf("report = %+v", r)
	}
}

func TestParseFailedUnits(t *testing.T) {
	out := "\n" +
		"  UNIT               LOAD   ACTIVE SUB    DESCRIPTION\n" +
		"● b.service          loaded failed failed B\n" +
		"a.socket loaded failed failed A socket\n" +
		"* c.mount loaded failed failed C\n" +
		"× d.service loaded failed failed D\n" +
		"a.socket loaded failed failed A socket again\n" +
		"\n" +
		"LOAD   = Reflects whether the unit definition was properly loaded.\n" +
		"4 loaded units listed.\n"
	got := parseFailedUnits([]byte(out))
	if want := (FailedUnits{"a.socket", "b.service", "c.mount", "d.service"}); !slices.Equal(got, want) {
		t.Fatalf("parsed %q, want %q", got, want)
	}
	if got := parseFailedUnits(nil); len(got) != 0 {
		t.Fatalf("parsed %q from nothing", got)
	}
}

func TestParseShow(t *testing.T) {
	out := "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n\n" +
		"Result=exit-code\nSubState=failed\nActiveState=failed\nLoadState=loaded\nId=b.service\n"
	got := parseShow([]byte(out))
	want := []unitState{
		{ID: "a.service", Load: "loaded", Active: "active", Sub: "running", Result: "success"},
		{ID: "b.service", Load: "loaded", Active: "failed", Sub: "failed", Result: "exit-code"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("parsed %+v", got)
	}
}
