package install

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/<name>.golden, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run `go test ./internal/install -run %s -update` to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", t.Name(), p, got, want)
	}
}

// sample is the Machine of the usage guide's full-install example, with the paths the
// runner would use.
func sample() Invocation {
	return Invocation{
		SourceDir:     "/var/tmp/nio/src-1234",
		FlakeDir:      ".",
		FlakeAttr:     "worker",
		Namespace:     "default",
		Machine:       "worker-1",
		User:          "root",
		Host:          "192.168.1.50",
		Port:          22,
		IdentityFile:  "/var/tmp/nio/nio-install-1/ssh-key",
		ExtraFilesDir: "/var/tmp/nio/nio-install-1/extra-files",
	}
}

func TestInstallArgsGolden(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Invocation)
	}{
		{"ipv4", func(*Invocation) {}},
		{"kexec, facter report, subdirectory flake, other port and user", func(inv *Invocation) {
			inv.FlakeDir = "hosts/workers"
			inv.FlakeAttr = "worker.gpu"
			inv.User = "deploy"
			inv.Port = 2222
			inv.KexecURL = "https://example.com/nixos-kexec-installer-x86_64-linux.tar.gz"
			inv.GenerateFacterReport = "hosts/workers/facter.json"
		}},
		{"ipv6", func(inv *Invocation) { inv.Host = "2001:db8::50" }},
		{"bracketed ipv6", func(inv *Invocation) { inv.Host = "[2001:db8::50]" }},
		{"ipv4-mapped ipv6", func(inv *Invocation) { inv.Host = "::ffff:192.168.1.50" }},
		{"dns name", func(inv *Invocation) { inv.Host = "worker-1.lab.example.com" }},
		{"operator extra args", func(inv *Invocation) { inv.ExtraArgs = []string{"--build-on", "remote"} }},
	}
	var out strings.Builder
	for _, tc := range cases {
		inv := sample()
		tc.edit(&inv)
		args, err := inv.Args()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out.WriteString("== " + tc.name + "\n")
		for _, a := range args {
			out.WriteString(a + "\n")
		}
	}
	golden(t, "args", out.String())
}

func TestInstallArgsRefuseUnsafeInput(t *testing.T) {
	cases := map[string]func(*Invocation){
		"relative source":           func(inv *Invocation) { inv.SourceDir = "src" },
		"source with #":             func(inv *Invocation) { inv.SourceDir = "/tmp/a#b" },
		"flake dir escaping":        func(inv *Invocation) { inv.FlakeDir = "../other" },
		"absolute flake dir":        func(inv *Invocation) { inv.FlakeDir = "/etc" },
		"flake dir with ?":          func(inv *Invocation) { inv.FlakeDir = "a?dir=b" },
		"attr with shell":           func(inv *Invocation) { inv.FlakeAttr = "x; rm -rf /" },
		"attr like an option":       func(inv *Invocation) { inv.FlakeAttr = "-x" },
		"user like an option":       func(inv *Invocation) { inv.User = "-oProxyCommand=sh" },
		"user with @":               func(inv *Invocation) { inv.User = "a@b" },
		"host like an option":       func(inv *Invocation) { inv.Host = "-oProxyCommand=sh" },
		"host with space":           func(inv *Invocation) { inv.Host = "a b" },
		"host with port":            func(inv *Invocation) { inv.Host = "10.0.0.1:22" },
		"port zero":                 func(inv *Invocation) { inv.Port = 0 },
		"relative identity file":    func(inv *Invocation) { inv.IdentityFile = "key" },
		"kexec not a URL":           func(inv *Invocation) { inv.KexecURL = "--help" },
		"facter report escaping":    func(inv *Invocation) { inv.GenerateFacterReport = "../facter.json" },
		"facter report absolute":    func(inv *Invocation) { inv.GenerateFacterReport = "/etc/facter.json" },
		"ipv6 without machine name": func(inv *Invocation) { inv.Host = "2001:db8::1"; inv.Machine = "" },
	}
	for name, edit := range cases {
		inv := sample()
		edit(&inv)
		if args, err := inv.Args(); err == nil {
			t.Errorf("%s: accepted, args %q", name, args)
		}
	}
}
