// Package install runs nixos-anywhere to install NixOS on a Machine: it builds the
// command line, lays out the extra files the new system boots with (the agent's TLS
// identity, an SSH host key the operator generated, the once-only install marker),
// and runs the command as a subprocess with streamed output and a timeout.
//
// What cannot run in tests (kexec, the disk wipe) happens inside nixos-anywhere;
// the tests replace its binary with a recording stand-in and check everything this
// package hands it.
package install

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/homystack/nio/api/identity"
)

// Invocation is one nixos-anywhere run in the terms of its command line. Args turns
// it into the argument list; nothing here is ever passed through a shell.
type Invocation struct {
	// SourceDir is the absolute path of the rendered source (the repository root).
	SourceDir string
	// FlakeDir is the flake's directory inside SourceDir ("." for the root).
	FlakeDir string
	// FlakeAttr is the name under nixosConfigurations.
	FlakeAttr string
	// Namespace and Machine name the Machine; used to name an IPv6 target (see Args).
	Namespace, Machine string
	// User is the SSH login (sshUser).
	User string
	// Host is the Machine's ipAddress: an IPv4 or IPv6 address or a DNS name.
	Host string
	// Port is the SSH port.
	Port int
	// IdentityFile is the path of the SSH private key file.
	IdentityFile string
	// ExtraFilesDir is the directory copied to the new system's root.
	ExtraFilesDir string
	// KexecURL, when set, is passed as --kexec.
	KexecURL string
	// GenerateFacterReport, when set, is the path relative to SourceDir where
	// nixos-anywhere writes the nixos-facter report it collects before building, so
	// the flake can read it.
	GenerateFacterReport string
	// ExtraArgs are appended before the per-Machine arguments (an operator setting,
	// e.g. `--build-on remote`).
	ExtraArgs []string
}

var (
	flakeAttrPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	sshUserPattern   = regexp.MustCompile(`^[a-z_][a-z0-9_-]*[$]?$`)
	kexecURLPattern  = regexp.MustCompile(`^(https?|file)://[^\s]+$`)
)

// Args returns nixos-anywhere's arguments (without the program name):
//
//	--flake path:<SourceDir>/<FlakeDir>#<FlakeAttr>
//	--target-host <User>@<Host> -p <Port> -i <IdentityFile>
//	--extra-files <ExtraFilesDir>
//	--ssh-option BatchMode=yes
//	[--kexec <KexecURL>]
//	[--generate-hardware-config nixos-facter <SourceDir>/<GenerateFacterReport>]
//
// The flake is a `path:` reference so Nix reads the rendered tree as it is, additional
// files included, and never mistakes it for part of an enclosing Git checkout.
//
// BatchMode makes every ssh (and ssh-copy-id) nixos-anywhere runs fail instead of
// prompting for a password or passphrase; the runner also gives it no terminal. Host
// key checking is not configurable here: nixos-anywhere turns it off itself (the
// kexec installer comes up with a fresh host key), and the new system's key is the
// one the operator generated and pins.
//
// An IPv6 address cannot be written into --target-host in a way every consumer
// accepts: ssh wants `user@2001:db8::1` (brackets make it a name lookup), while the
// ssh-ng:// store URLs nixos-anywhere builds from the same string need brackets in
// current Nix. So an IPv6 target is named by the Machine's DNS name
// (`<name>.<namespace>.machine.nio`, which resolves nowhere) and the address is
// given to ssh as `--ssh-option HostName=<address>`, which nixos-anywhere passes to
// every ssh and nix-copy call.
func (inv Invocation) Args() ([]string, error) {
	if !filepath.IsAbs(inv.SourceDir) || filepath.Clean(inv.SourceDir) != inv.SourceDir {
		return nil, fmt.Errorf("source dir %q must be an absolute clean path", inv.SourceDir)
	}
	if strings.ContainsAny(inv.SourceDir, "#?% \t\n") {
		// Characters with a meaning in a flake URL (or none at all in a path).
		return nil, fmt.Errorf("source dir %q contains a character not allowed in a flake path", inv.SourceDir)
	}
	flakeDir, err := relativePath("flake directory", inv.FlakeDir, true)
	if err != nil {
		return nil, err
	}
	if !flakeAttrPattern.MatchString(inv.FlakeAttr) {
		return nil, fmt.Errorf("flake attribute %q must match %s", inv.FlakeAttr, flakeAttrPattern)
	}
	if !sshUserPattern.MatchString(inv.User) || len(inv.User) > 32 {
		return nil, fmt.Errorf("ssh user %q is not a valid login name", inv.User)
	}
	if inv.Port < 1 || inv.Port > 65535 {
		return nil, fmt.Errorf("ssh port %d out of range", inv.Port)
	}
	for what, p := range map[string]string{"identity file": inv.IdentityFile, "extra files dir": inv.ExtraFilesDir} {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%s %q must be an absolute path", what, p)
		}
	}
	if inv.KexecURL != "" && !kexecURLPattern.MatchString(inv.KexecURL) {
		return nil, fmt.Errorf("kexec image %q must be an http(s):// or file:// URL", inv.KexecURL)
	}
	target, sshOptions, err := targetHost(inv.User, inv.Host, inv.Namespace, inv.Machine)
	if err != nil {
		return nil, err
	}

	args := append([]string(nil), inv.ExtraArgs...)
	args = append(args,
		"--flake", "path:"+filepath.Join(inv.SourceDir, flakeDir)+"#"+inv.FlakeAttr,
		"--target-host", target,
		"-p", strconv.Itoa(inv.Port),
		"-i", inv.IdentityFile,
		"--extra-files", inv.ExtraFilesDir,
		"--ssh-option", "BatchMode=yes",
	)
	for _, o := range sshOptions {
		args = append(args, "--ssh-option", o)
	}
	if inv.KexecURL != "" {
		args = append(args, "--kexec", inv.KexecURL)
	}
	if inv.GenerateFacterReport != "" {
		report, err := relativePath("facter report path", inv.GenerateFacterReport, false)
		if err != nil {
			return nil, err
		}
		args = append(args, "--generate-hardware-config", "nixos-facter", filepath.Join(inv.SourceDir, report))
	}
	return args, nil
}

// targetHost returns the --target-host value and any ssh options it needs.
func targetHost(user, host, namespace, machine string) (string, []string, error) {
	bare := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if addr, err := netip.ParseAddr(bare); err == nil {
		if addr.Is4() || addr.Is4In6() {
			return user + "@" + addr.Unmap().String(), nil, nil
		}
		if namespace == "" || machine == "" {
			return "", nil, errors.New("an IPv6 target needs the Machine's namespace and name")
		}
		alias := identity.MachineDNSName(namespace, machine)
		if errs := validation.IsDNS1123Subdomain(alias); len(errs) > 0 {
			return "", nil, fmt.Errorf("machine %s/%s: %s", namespace, machine, strings.Join(errs, "; "))
		}
		return user + "@" + alias, []string{"HostName=" + addr.String()}, nil
	}
	name := strings.TrimSuffix(host, ".")
	if errs := validation.IsDNS1123Subdomain(strings.ToLower(name)); len(errs) > 0 {
		return "", nil, fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	return user + "@" + name, nil, nil
}

// relativePath checks that p is relative, clean and stays inside its root (defence in
// depth: the API server validates these fields too). "." is allowed when dotOK.
func relativePath(what, p string, dotOK bool) (string, error) {
	switch {
	case p == "." && dotOK:
		return p, nil
	case p == "" || p == ".":
		return "", fmt.Errorf("%s is empty", what)
	case path.IsAbs(p) || strings.Contains(p, `\`) || strings.ContainsRune(p, 0):
		return "", fmt.Errorf("%s %q must be a relative path", what, p)
	case path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../"):
		return "", fmt.Errorf("%s %q must be clean and inside the source", what, p)
	case strings.ContainsAny(p, "#?% \t\n"):
		return "", fmt.Errorf("%s %q contains a character not allowed in a flake path", what, p)
	}
	return p, nil
}
