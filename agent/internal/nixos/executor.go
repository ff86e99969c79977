// Package nixos runs the steps of nixos-rebuild on the host, one command each, and
// reads the system profile and the running system. The agent's server drives an
// Executor, so tests (and benchmarks) can put a stand-in in place of real Nix.
package nixos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Stream is where a line of output came from.
type Stream int

// Streams of output lines.
const (
	Stdout Stream = iota + 1
	Stderr
	// Agent marks lines the agent writes itself (e.g. the command it runs).
	Agent
)

// LineFunc receives every line of a step's output, without its newline.
type LineFunc func(s Stream, line string)

// Target is a NixOS system to build, with paths on this host.
type Target struct {
	// FlakeDir and Attr name nixosConfigurations.<Attr> of the flake in FlakeDir.
	FlakeDir string
	Attr     string
	// ModuleFile, when set instead, is a configuration module built through
	// <nixpkgs/nixos> the way `nixos-rebuild -I nixos-config=<file>` does.
	ModuleFile string
}

// Executor runs the steps of an operation. Implementations stream every output line
// to the LineFunc they are given.
type Executor interface {
	// Build builds the target's toplevel, keeping a GC root at outLink, and returns
	// its store path.
	Build(ctx context.Context, t Target, outLink string, log LineFunc) (string, error)
	// SetProfile makes storePath the system profile's new generation.
	SetProfile(ctx context.Context, storePath string, log LineFunc) error
	// SwitchGeneration points the system profile back at generation gen.
	SwitchGeneration(ctx context.Context, gen int64, log LineFunc) error
	// Activate runs <storePath>/bin/switch-to-configuration <action> as activation a,
	// whose exit status is recorded on disk (see Activation) so an agent that died
	// meanwhile can learn it from WaitActivation.
	Activate(ctx context.Context, storePath, action string, a Activation, log LineFunc) error
	// WaitActivation waits for activation a, started by this or an earlier agent
	// process, to end, streaming the output it still writes, and returns its error:
	// nil for exit status 0. An activation that ended without recording a status (it
	// never started, or was killed) is an error too.
	WaitActivation(ctx context.Context, a Activation, log LineFunc) error
	// Generation is the system profile's current generation, 0 when there is none.
	Generation() (int64, error)
	// Generations are the generations the system profile holds, oldest first.
	Generations() ([]Generation, error)
	// CurrentSystem is the store path of the running system, "" when unknown.
	CurrentSystem() (string, error)
	// BootedSystem is the store path of the booted system, "" when unknown.
	BootedSystem() (string, error)
}

// Generation is one generation of the system profile.
type Generation struct {
	Number int64
	// System is the store path the generation holds.
	System string
}

// Config locates the host's Nix binaries and system links.
type Config struct {
	// NixBinDir holds nix, nix-env and nix-build; empty means PATH.
	NixBinDir string
	// Profile is the system profile, /nix/var/nix/profiles/system on NixOS.
	Profile string
	// CurrentSystemLink and BootedSystemLink are /run/current-system and
	// /run/booted-system on NixOS.
	CurrentSystemLink string
	BootedSystemLink  string
	// SystemdRun activates through systemd-run (see Host.Activate).
	SystemdRun bool
	// PollInterval is how often WaitActivation checks an activation started by an
	// earlier agent process (default 1s).
	PollInterval time.Duration
}

// Activation names one run of switch-to-configuration so that it can be found again
// after the agent restarted: the transient unit's name, and the files the run leaves
// in Dir (the operation's work directory):
//
//	<Dir>/<Unit>.log     its output
//	<Dir>/<Unit>.pid     the wrapper shell's pid (liveness without systemd)
//	<Dir>/<Unit>.status  its exit status, written when it ends — e.g. "0"
type Activation struct {
	Unit string
	Dir  string
}

func (a Activation) logPath() string    { return filepath.Join(a.Dir, a.Unit+".log") }
func (a Activation) pidPath() string    { return filepath.Join(a.Dir, a.Unit+".pid") }
func (a Activation) statusPath() string { return filepath.Join(a.Dir, a.Unit+".status") }

// StatusPath is where the activation's exit status appears when it ends.
func (a Activation) StatusPath() string { return a.statusPath() }

var unitNameRE = regexp.MustCompile(`^[A-Za-z0-9:_.-]{1,200}$`)

func (a Activation) check() error {
	if !unitNameRE.MatchString(a.Unit) || a.Dir == "" {
		return fmt.Errorf("activation %q in %q: want a unit name of letters, digits and \":_.-\" and a directory", a.Unit, a.Dir)
	}
	return nil
}

// Host is the Executor that runs real Nix on this machine.
type Host struct {
	cfg Config
}

// NewHost returns an Executor for cfg.
func NewHost(cfg Config) *Host { return &Host{cfg: cfg} }

func (h *Host) bin(name string) string {
	if h.cfg.NixBinDir == "" {
		return name
	}
	return filepath.Join(h.cfg.NixBinDir, name)
}

// ToplevelAttrPath is the flake attribute path of a configuration's toplevel. The
// attribute is quoted so names with dots stay one attribute.
func ToplevelAttrPath(attr string) (string, error) {
	if attr == "" || strings.ContainsAny(attr, "\"\\\x00\n\r") {
		return "", fmt.Errorf("configuration attribute %q must be non-empty without quotes, backslashes or newlines", attr)
	}
	return `nixosConfigurations."` + attr + `".config.system.build.toplevel`, nil
}

// Build implements Executor with `nix build` (flakes) or `nix-build '<nixpkgs/nixos>'`
// (module files), reading the store path from the out-link (Nix 2.8 has no
// --print-out-paths).
func (h *Host) Build(ctx context.Context, t Target, outLink string, log LineFunc) (string, error) {
	var argv []string
	if t.ModuleFile != "" {
		argv = []string{h.bin("nix-build"), "<nixpkgs/nixos>", "-A", "system",
			"-I", "nixos-config=" + t.ModuleFile, "--out-link", outLink}
	} else {
		attrPath, err := ToplevelAttrPath(t.Attr)
		if err != nil {
			return "", err
		}
		if strings.ContainsAny(t.FlakeDir, "#?") {
			return "", fmt.Errorf("flake directory %q must not contain '#' or '?'", t.FlakeDir)
		}
		argv = []string{h.bin("nix"), "build", "--print-build-logs", "--out-link", outLink,
			"path:" + t.FlakeDir + "#" + attrPath}
	}
	if err := run(ctx, argv, log); err != nil {
		return "", err
	}
	out, err := os.Readlink(outLink)
	if err != nil {
		return "", fmt.Errorf("read build result: %w", err)
	}
	return out, nil
}

// SetProfile implements Executor with `nix-env -p <profile> --set <path>`.
func (h *Host) SetProfile(ctx context.Context, storePath string, log LineFunc) error {
	return run(ctx, []string{h.bin("nix-env"), "-p", h.cfg.Profile, "--set", storePath}, log)
}

// SwitchGeneration implements Executor with `nix-env -p <profile> --switch-generation`.
func (h *Host) SwitchGeneration(ctx context.Context, gen int64, log LineFunc) error {
	return run(ctx, []string{h.bin("nix-env"), "-p", h.cfg.Profile, "--switch-generation", strconv.FormatInt(gen, 10)}, log)
}

var generationRE = regexp.MustCompile(`-(\d+)-link$`)

// Generation implements Executor by reading the profile link (<name>-<N>-link).
func (h *Host) Generation() (int64, error) {
	target, err := os.Readlink(h.cfg.Profile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read system profile: %w", err)
	}
	m := generationRE.FindStringSubmatch(target)
	if m == nil {
		return 0, fmt.Errorf("system profile points at %q, not a generation link", target)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// Generations implements Executor by listing the profile's <name>-<N>-link
// siblings, as nix-env --list-generations does.
func (h *Host) Generations() ([]Generation, error) {
	dir, base := filepath.Split(h.cfg.Profile)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list system profile generations: %w", err)
	}
	var gens []Generation
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), base+"-")
		if !ok {
			continue
		}
		num, ok = strings.CutSuffix(num, "-link")
		n, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || n <= 0 {
			continue
		}
		sys, err := resolve(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		gens = append(gens, Generation{Number: n, System: sys})
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].Number < gens[j].Number })
	return gens, nil
}

// CurrentSystem implements Executor by resolving the current-system link.
func (h *Host) CurrentSystem() (string, error) { return resolve(h.cfg.CurrentSystemLink) }

// ProfileSystem is the store path the system profile's generation holds: what the
// next boot runs, "" when there is no profile.
func (h *Host) ProfileSystem() (string, error) { return resolve(h.cfg.Profile) }

// BootedSystem implements Executor by resolving the booted-system link.
func (h *Host) BootedSystem() (string, error) { return resolve(h.cfg.BootedSystemLink) }

func resolve(link string) (string, error) {
	if link == "" {
		return "", nil
	}
	p, err := filepath.EvalSymlinks(link)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", link, err)
	}
	return p, nil
}

// NeedsReboot reports whether only a reboot runs all of the system the profile
// holds: the running system's kernel, initrd or kernel modules differ from the booted
// system's — the check NixOS itself makes — or the profile's system (next) is neither
// running nor booted, as after action boot. Unknown systems never need one.
func NeedsReboot(current, booted, next string) bool {
	if current == "" || booted == "" {
		return false
	}
	if next != "" && next != current && next != booted {
		return true
	}
	if current == booted {
		return false
	}
	for _, part := range []string{"kernel", "initrd", "kernel-modules"} {
		// The links point straight into the store, so their targets are the identity.
		c, cerr := os.Readlink(filepath.Join(current, part))
		b, berr := os.Readlink(filepath.Join(booted, part))
		if (cerr == nil) != (berr == nil) || c != b {
			return true
		}
	}
	return false
}
