package facter

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/homystack/nio/testkit/facterfixture"
)

// standIn writes an executable nixos-facter stand-in that prints file (or text).
func standIn(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nixos-facter")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunReturnsARealShapedReport(t *testing.T) {
	fixture := facterfixture.WriteFile(t)
	report, err := Run(context.Background(), Config{Path: standIn(t, `exec cat "`+fixture+`"`)})
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Version  int             `json:"version"`
		System   string          `json:"system"`
		Hardware json.RawMessage `json:"hardware"`
	}
	if err := json.Unmarshal(report, &r); err != nil || r.Version != 1 || r.System != "x86_64-linux" || len(r.Hardware) == 0 {
		t.Fatalf("report = %+v (%v)", r, err)
	}
}

func TestRunRefusesGarbageAndFailures(t *testing.T) {
	cases := map[string]string{
		"not json":       `echo "Segmentation fault (core dumped)"`,
		"json array":     `echo '[1,2]'`,
		"truncated json": `printf '{"version": 1, "hardware": {'`,
		"exit status":    `echo '{"version":1}'; echo "cannot read /sys" >&2; exit 3`,
	}
	for name, script := range cases {
		t.Run(name, func(t *testing.T) {
			if report, err := Run(context.Background(), Config{Path: standIn(t, script)}); err == nil {
				t.Fatalf("accepted %q", report)
			}
		})
	}
	if _, err := Run(context.Background(), Config{Path: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing binary: %v", err)
	}
}

// fakeSystemdRun puts a systemd-run stand-in first on PATH: it records its arguments
// (one a line) in the returned file, checks the flags the agent relies on, and runs
// what follows "--" the way --pipe does, with our stdout and stderr.
func fakeSystemdRun(t *testing.T) (argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	script := `#!/bin/sh
printf '%s\n' "$@" > "` + argsFile + `"
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
[ "$1" = "--" ] || { echo "systemd-run: no -- before the command" >&2; exit 1; }
shift
case "$1" in /*) ;; *) echo "systemd-run: $1 is not absolute" >&2; exit 1;; esac
exec "$@"
`
	if err := os.WriteFile(filepath.Join(dir, "systemd-run"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return argsFile
}

func TestRunWithSystemdRunLeavesTheSandboxThroughATransientUnit(t *testing.T) {
	argsFile := fakeSystemdRun(t)
	facter := standIn(t, `echo '{"version":1,"system":"x86_64-linux"}'`)
	// A bare name, as --facter-path defaults to: it is resolved on the agent's PATH,
	// since the transient unit would not have the agent's PATH.
	t.Setenv("PATH", filepath.Dir(facter)+string(os.PathListSeparator)+os.Getenv("PATH"))
	report, err := Run(context.Background(), Config{Path: "nixos-facter", SystemdRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if string(report) != `{"version":1,"system":"x86_64-linux"}` {
		t.Errorf("report = %s", report)
	}
	data, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := []string{"--pipe", "--wait", "--collect", "--quiet", "--no-ask-password", "--service-type=exec", "--", facter}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("systemd-run %q\nwant         %q", got, want)
	}
}

func TestRunWithSystemdRunReportsTheToolsFailure(t *testing.T) {
	fakeSystemdRun(t)
	_, err := Run(context.Background(), Config{Path: standIn(t, `echo "cannot read /sys" >&2; exit 3`), SystemdRun: true})
	if err == nil || !strings.Contains(err.Error(), "cannot read /sys") {
		t.Errorf("err = %v, want the tool's stderr", err)
	}
	if _, err := Run(context.Background(), Config{Path: "no-such-facter", SystemdRun: true}); err == nil || !strings.Contains(err.Error(), "no-such-facter") {
		t.Errorf("a missing binary: %v", err)
	}
}

func TestRunWithoutSystemdRunExecsDirectly(t *testing.T) {
	// No systemd-run anywhere: the tests and the demo run the agent with
	// --systemd-run=false, and must not need one.
	t.Setenv("PATH", t.TempDir())
	report, err := Run(context.Background(), Config{Path: standIn(t, `/bin/echo '{"version":1}'`)})
	if err != nil || string(report) != `{"version":1}` {
		t.Errorf("report %s, err %v", report, err)
	}
}
