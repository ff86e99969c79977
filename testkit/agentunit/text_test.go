package agentunit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestEverySettingSaysWhy(t *testing.T) {
	file, err := DefaultSpecFile()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := LoadSpec(file)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{"args": true}
	// A description describes itself.
	delete(spec.Unit, "Description")
	for sec, m := range map[string]map[string]any{"unit": spec.Unit, "service": spec.Service, "install": spec.Install} {
		for k := range m {
			keys[sec+"."+k] = true
		}
	}
	for k := range spec.Environment {
		keys["environment."+k] = true
	}
	for k := range keys {
		if spec.Why[k] == "" {
			t.Errorf("%s: %s has no entry in \"why\"", file, k)
		}
	}
	for k := range spec.Why {
		if !keys[k] {
			t.Errorf("%s: \"why\" explains %s, which is not set", file, k)
		}
	}
	// nix's cache must be the directory systemd makes writable.
	if got, want := spec.Environment["XDG_CACHE_HOME"], "/var/cache/"+spec.Service["CacheDirectory"].(string); got != want {
		t.Errorf("XDG_CACHE_HOME = %s, but CacheDirectory= makes %s", got, want)
	}
}

func TestRenderWritesTheUnitNixOSWould(t *testing.T) {
	f, err := Render(Options{ExecPath: "/opt/nio/bin/nio-agent", FacterPath: "/opt/nio/bin/nixos-facter",
		ListenAddress: "::1", ExtraArgs: []string{"--max-source-bytes=100", "50%", "$HOME"},
		Path: []string{"/opt/nio/bin", "/usr/bin"}, Environment: map[string]string{"NIX_CONFIG": "substituters ="}})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"[Unit]\n", "\n\n[Service]\n", "\n\n[Install]\nWantedBy=multi-user.target\n",
		"\nX-RestartIfChanged=false\n",
		"\n[Service]\nEnvironment=\"NIX_CONFIG=substituters =\"\nEnvironment=\"NIX_PATH=\"\n",
		"\nEnvironment=\"PATH=/opt/nio/bin:/usr/bin\"\n",
		`ExecStart="/opt/nio/bin/nio-agent" "--listen=[::1]:9443" "--tls-dir=/var/lib/nio-agent/tls" "--state-dir=/var/lib/nio-agent" "--facter-path=/opt/nio/bin/nixos-facter" "--log-level=info" "--log-format=json" "--max-source-bytes=100" "50%%" "$$HOME"` + "\n",
		"\nCapabilityBoundingSet=CAP_CHOWN\n",
		"\nRuntimeDirectory=nio-secrets\nRuntimeDirectoryMode=0711\nRuntimeDirectoryPreserve=yes\n",
		"\nStateDirectory=nio-agent\nStateDirectory=nio-agent/tls\n",
		"\nReadWritePaths=-/nix/var/nix/profiles\nReadWritePaths=-/nix/var/nix/gcroots\n",
	} {
		if !strings.Contains(f.Text, line) {
			t.Errorf("unit lacks %q:\n%s", line, f.Text)
		}
	}
	if f.TmpfilesConf() != "" {
		t.Errorf("tmpfiles for dirs under /var/lib: %q", f.TmpfilesConf())
	}
	if _, err := Render(Options{}); err == nil {
		t.Error("no ExecPath was accepted")
	}
	if _, err := Render(Options{ExecPath: "/x", LogLevel: "trace", Port: 70000}); err == nil ||
		!strings.Contains(err.Error(), "logLevel") || !strings.Contains(err.Error(), "port") {
		t.Errorf("bad level and port: %v", err)
	}
}

func TestWriteToInstallsTheUnitEnabled(t *testing.T) {
	root := t.TempDir()
	f, err := Render(Options{ExecPath: "/usr/local/bin/nio-agent", StateDir: "/srv/nio", TLSDir: "/srv/nio/tls"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WriteTo(root); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteTo(root); err != nil {
		t.Fatalf("a second WriteTo: %v", err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/nio-agent.service"))
	if err != nil || string(unit) != f.Text {
		t.Errorf("unit file: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/nio-agent.service")); err != nil || target != "/etc/systemd/system/nio-agent.service" {
		t.Errorf("wants link -> %q, %v", target, err)
	}
	conf, err := os.ReadFile(filepath.Join(root, "etc/tmpfiles.d/nio-agent.conf"))
	if want := "d /srv/nio 0700 root root - -\nd /srv/nio/tls 0700 root root - -\n"; err != nil || string(conf) != want {
		t.Errorf("tmpfiles.d = %q, %v; want %q", conf, err, want)
	}
}

// systemd itself reads the unit: no unknown setting, no bad value. The host's
// systemd is Debian's (252 on bookworm); NixOS's is newer and knows all of these.
func TestSystemdAcceptsTheUnit(t *testing.T) {
	// hack/deps.sh installs systemd-container, which brings systemd-analyze.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is not installed (%v): run hack/deps.sh", err)
	}
	dir := t.TempDir()
	// Real executables, since verify checks that ExecStart's is one.
	f, err := Render(Options{ExecPath: "/bin/true", FacterPath: "/bin/true", StateDir: "/srv/nio",
		ExtraArgs: []string{"--max-source-bytes=100", "50% of $HOME", `a "quoted" \ arg`}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, Name), []byte(f.Text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, Name))
	out, err := cmd.CombinedOutput()
	// Units the host lacks (nix-daemon.socket on a machine without Nix's units) are
	// the host's business; anything about this file is not.
	var problems []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, Name) {
			problems = append(problems, line)
		}
	}
	if len(problems) > 0 || (err != nil && len(out) == 0) {
		t.Errorf("systemd-analyze verify: %v\n%s\n%s", err, strings.Join(problems, "\n"), f.Text)
	}
}
