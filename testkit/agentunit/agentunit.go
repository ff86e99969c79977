// Package agentunit renders nio-agent.service as the NixOS module (nix/module.nix)
// does, from the same file: nix/agent-unit.json holds the unit's static settings and
// hardening, and this package adds the option-dependent parts (ExecStart, the
// directories, the environment) by the module's rules. A test host that runs real
// systemd gets the unit a NixOS host would run; the package's tests evaluate the
// module offline and compare, so the two cannot drift apart silently.
//
// Writing the unit into a container root (a Debian systemd-nspawn tree, say):
//
//	f, err := agentunit.Render(agentunit.Options{
//		ExecPath:    "/usr/local/bin/nio-agent",
//		FacterPath:  "/usr/local/bin/nixos-facter",
//		Path:        []string{"/usr/local/bin", "/usr/bin", "/bin"}, // nix, git, systemd-run, facter
//		Environment: map[string]string{"NIX_CONFIG": offlineNixConfig},
//	})
//	if err != nil { … }                   // the module would refuse these options
//	err = f.WriteTo(root)                 // unit, multi-user.target.wants link, tmpfiles.d
//
// then, inside the container: systemctl daemon-reload; systemd-tmpfiles --create
// (only when f.Tmpfiles is not empty); deliver tls/{ca.crt,tls.crt,tls.key} into
// TLSDir; systemctl restart nio-agent — as the operator does. The unit runs
// NIX_REMOTE=daemon: the host needs a running nix-daemon (Debian's nix-bin ships
// nix-daemon.socket), as on NixOS.
//
// What NixOS adds beyond this unit, and this package does not: its default PATH
// entries (coreutils, findutils, grep, sed, systemd and the sbin dirs — pass what
// the host needs in Options.Path) and the unit's X-Restart-Triggers and similar
// bookkeeping. restartIfChanged = false is written as NixOS writes it,
// X-RestartIfChanged=false in [Service], which its switch-to-configuration reads.
package agentunit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// Name is the unit's name.
const Name = "nio-agent.service"

// Defaults of the options, as nix/module.nix has them.
const (
	DefaultPort       = 9443
	DefaultStateDir   = "/var/lib/nio-agent"
	DefaultTLSDir     = "/var/lib/nio-agent/tls"
	DefaultLogLevel   = "info"
	DefaultFacterPath = "nixos-facter"
)

// Options are the services.nio-agent options, in Go. Zero values take the module's
// defaults.
type Options struct {
	// ExecPath is the nio-agent binary (the module: lib.getExe package). Required,
	// absolute.
	ExecPath string
	// ListenAddress is the address to listen on; empty means every address. An IPv6
	// address may be given without brackets.
	ListenAddress string
	// Port is the TCP port (default 9443).
	Port int
	// StateDir is --state-dir (default /var/lib/nio-agent).
	StateDir string
	// TLSDir is --tls-dir (default /var/lib/nio-agent/tls); until the identity is
	// there the agent waits for it.
	TLSDir string
	// FacterPath is --facter-path (the module: lib.getExe facterPackage; default
	// "nixos-facter", found on the agent's PATH).
	FacterPath string
	// LogLevel is debug, info (default), warn or error.
	LogLevel string
	// ExtraArgs are appended to ExecStart, escaped; not the flags the other options
	// set.
	ExtraArgs []string
	// Path is the unit's PATH, directory by directory (the module: the bin dirs of
	// nix, git, nixos-facter and systemd). Empty: no PATH= (systemd's default).
	Path []string
	// NixPath is NIX_PATH, entry by entry (the module: nix.nixPath). Always set,
	// empty when NixPath is.
	NixPath []string
	// Environment is set after the spec's environment and NIX_PATH/PATH, and wins
	// over them: for what a test host needs on top (NIX_CONFIG for offline Nix).
	Environment map[string]string
	// Spec is the unit's static part; nil reads nix/agent-unit.json of this
	// repository (DefaultSpecFile).
	Spec *Spec
}

// Section is one [Section] of a unit file: key → the values, one line each, as
// NixOS writes a setting (a list is a line per element; bools are true/false).
// Environment values are as written in the file: JSON-quoted "KEY=value".
type Section map[string][]string

// File is the rendered unit and what must exist beside it.
type File struct {
	// Name is nio-agent.service.
	Name string
	// Unit, Service and Install are the sections.
	Unit, Service, Install Section
	// Text is the unit file.
	Text string
	// Tmpfiles are the systemd.tmpfiles.rules the module adds: the directories
	// outside /var/lib that must exist before the unit starts (those under
	// /var/lib are StateDirectory= entries, which systemd creates itself).
	Tmpfiles []string
}

// Spec is nix/agent-unit.json.
type Spec struct {
	Unit        map[string]any    `json:"unit"`
	Service     map[string]any    `json:"service"`
	Install     map[string]any    `json:"install"`
	Environment map[string]string `json:"environment"`
	// Args come after the option-dependent flags in ExecStart, before ExtraArgs.
	Args []string `json:"args"`
	// Why says, for each "section.Key", why it is set: JSON has no comments.
	Why map[string]string `json:"why"`
}

// LoadSpec reads a spec file.
func LoadSpec(file string) (*Spec, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("agent unit spec: %w", err)
	}
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("agent unit spec %s: %w", file, err)
	}
	for _, need := range []string{"Description", "After", "Wants"} {
		if _, ok := s.Unit[need]; !ok {
			return nil, fmt.Errorf("agent unit spec %s: unit.%s is missing (the module reads it)", file, need)
		}
	}
	if _, ok := s.Install["WantedBy"]; !ok {
		return nil, fmt.Errorf("agent unit spec %s: install.WantedBy is missing (the module reads it)", file)
	}
	return &s, nil
}

// DefaultSpecFile is nix/agent-unit.json of the repository this package was built
// from: found from this source file's path, or, when that is not a real path
// (-trimpath), from the working directory upwards.
func DefaultSpecFile() (string, error) {
	const rel = "nix/agent-unit.json"
	if _, src, _, ok := runtime.Caller(0); ok && filepath.IsAbs(src) {
		p := filepath.Join(filepath.Dir(src), "..", "..", filepath.FromSlash(rel))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("agent unit spec: nix/agent-unit.json not found beside this package or above the working directory")
		}
		dir = parent
	}
}

func (o Options) withDefaults() Options {
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.TLSDir == "" {
		o.TLSDir = DefaultTLSDir
	}
	if o.LogLevel == "" {
		o.LogLevel = DefaultLogLevel
	}
	if o.FacterPath == "" {
		o.FacterPath = DefaultFacterPath
	}
	return o
}

var (
	dirPattern    = regexp.MustCompile(`^(/[A-Za-z0-9._+@-]+)+$`)
	dotComponent  = regexp.MustCompile(`^(.*/)?\.\.?(/.*)?$`)
	flagPattern   = regexp.MustCompile(`^--?([a-z-]+)(=.*)?$`)
	ownedFlags    = []string{"listen", "tls-dir", "state-dir", "facter-path", "log-level", "log-format", "systemd-run"}
	hiddenDirs    = []string{"/tmp", "/var/tmp", "/home", "/root", "/run/user", "/proc", "/sys", "/dev", "/nix/store"}
	logLevels     = []string{"debug", "info", "warn", "error"}
	errNoExecPath = errors.New("agentunit: Options.ExecPath must be an absolute path")
)

func under(dir, p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// Check returns what the module's assertions say of these options: the same
// messages, in the same order; none when the unit can work.
func Check(o Options) []string {
	o = o.withDefaults()
	problems := append(dirProblems("stateDir", o.StateDir), dirProblems("tlsDir", o.TLSDir)...)
	for _, arg := range o.ExtraArgs {
		if m := flagPattern.FindStringSubmatch(arg); m != nil && contains(ownedFlags, m[1]) {
			problems = append(problems, `services.nio-agent.extraArgs: "`+arg+`" is set by the module; use its options (listenAddress, port, stateDir, tlsDir, facterPackage, logLevel) instead, --systemd-run is required by the sandbox`)
		}
	}
	return problems
}

func dirProblems(name, p string) []string {
	prefix := `services.nio-agent.` + name + ` = "` + p + `": `
	switch {
	case !dirPattern.MatchString(p):
		return []string{prefix + "must be an absolute path of letters, digits and . _ + @ - (no spaces, %, or trailing slash), other than /"}
	case dotComponent.MatchString(p):
		return []string{prefix + "must not contain . or .. components"}
	}
	for _, d := range hiddenDirs {
		if under(d, p) {
			return []string{prefix + "is under a directory the unit's sandbox hides or makes private (" + strings.Join(hiddenDirs, ", ") + ")"}
		}
	}
	if p == "/var/lib" {
		return []string{prefix + "must be a directory of its own, not /var/lib"}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Render makes the unit for o, or says why the module would refuse o (its
// assertions, and what its option types check).
func Render(o Options) (*File, error) {
	o = o.withDefaults()
	var problems []string
	if !path.IsAbs(o.ExecPath) {
		return nil, errNoExecPath
	}
	if o.Port < 1 || o.Port > 65535 {
		problems = append(problems, fmt.Sprintf("services.nio-agent.port = %d: not a port", o.Port))
	}
	if !contains(logLevels, o.LogLevel) {
		problems = append(problems, fmt.Sprintf("services.nio-agent.logLevel = %q: want one of %s", o.LogLevel, strings.Join(logLevels, ", ")))
	}
	if problems = append(problems, Check(o)...); len(problems) > 0 {
		return nil, fmt.Errorf("agentunit: the module would refuse these options:\n%s", strings.Join(problems, "\n"))
	}
	spec := o.Spec
	if spec == nil {
		file, err := DefaultSpecFile()
		if err != nil {
			return nil, err
		}
		if spec, err = LoadSpec(file); err != nil {
			return nil, err
		}
	}

	// The directories, by the module's rule: under /var/lib a StateDirectory=,
	// elsewhere tmpfiles plus ReadWritePaths with '-'.
	var stateDirs, otherDirs []string
	for _, d := range unique(o.StateDir, o.TLSDir) {
		if strings.HasPrefix(d, "/var/lib/") {
			stateDirs = append(stateDirs, strings.TrimPrefix(d, "/var/lib/"))
		} else {
			otherDirs = append(otherDirs, d)
		}
	}

	host := o.ListenAddress
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]"
	}
	argv := []string{o.ExecPath,
		"--listen=" + host + ":" + strconv.Itoa(o.Port),
		"--tls-dir=" + o.TLSDir,
		"--state-dir=" + o.StateDir,
		"--facter-path=" + o.FacterPath,
		"--log-level=" + o.LogLevel,
	}
	argv = append(append(argv, spec.Args...), o.ExtraArgs...)
	execStart, err := EscapeExecArgs(argv)
	if err != nil {
		return nil, fmt.Errorf("agentunit: ExecStart: %w", err)
	}

	f := &File{Name: Name, Unit: section(spec.Unit), Service: section(spec.Service), Install: section(spec.Install)}
	f.Service["ExecStart"] = []string{execStart}
	// What NixOS writes for restartIfChanged = false, and what its
	// switch-to-configuration reads to leave the unit running.
	f.Service["X-RestartIfChanged"] = []string{"false"}
	for _, d := range otherDirs {
		f.Service["ReadWritePaths"] = append(f.Service["ReadWritePaths"], "-"+d)
		f.Tmpfiles = append(f.Tmpfiles, "d "+d+" 0700 root root - -")
	}
	if len(stateDirs) > 0 {
		f.Service["StateDirectory"] = stateDirs
	}

	env := map[string]string{}
	for k, v := range spec.Environment {
		env[k] = v
	}
	env["NIX_PATH"] = strings.Join(o.NixPath, ":")
	if len(o.Path) > 0 {
		env["PATH"] = strings.Join(o.Path, ":")
	}
	for k, v := range o.Environment {
		env[k] = v
	}
	for _, k := range sortedKeys(env) {
		f.Service["Environment"] = append(f.Service["Environment"], jsonString(k+"="+env[k]))
	}

	var b strings.Builder
	writeSection(&b, "Unit", f.Unit)
	b.WriteByte('\n')
	writeSection(&b, "Service", f.Service)
	b.WriteByte('\n')
	writeSection(&b, "Install", f.Install)
	f.Text = b.String()
	return f, nil
}

func unique(items ...string) []string {
	var out []string
	for _, s := range items {
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// section turns spec values into lines as NixOS does: a list is a line per element,
// a bool true/false, a number its decimal form.
func section(m map[string]any) Section {
	s := Section{}
	for k, v := range m {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				s[k] = append(s[k], scalar(e))
			}
		default:
			s[k] = []string{scalar(v)}
		}
	}
	return s
}

func scalar(v any) string {
	switch v := v.(type) {
	case bool:
		return strconv.FormatBool(v)
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

// writeSection writes Environment= first, then the keys in order, as NixOS does.
func writeSection(b *strings.Builder, name string, s Section) {
	fmt.Fprintf(b, "[%s]\n", name)
	for _, v := range s["Environment"] {
		fmt.Fprintf(b, "Environment=%s\n", v)
	}
	for _, k := range sortedKeys(s) {
		if k == "Environment" {
			continue
		}
		for _, v := range s[k] {
			fmt.Fprintf(b, "%s=%s\n", k, v)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TmpfilesConf is the tmpfiles.d file for f.Tmpfiles, "" when there is none.
func (f *File) TmpfilesConf() string {
	if len(f.Tmpfiles) == 0 {
		return ""
	}
	return strings.Join(f.Tmpfiles, "\n") + "\n"
}

// WriteTo installs the unit into the root of a system (a container's tree, or "/"):
// etc/systemd/system/nio-agent.service, the .wants links of its WantedBy= (what
// `systemctl enable` makes, and NixOS makes from wantedBy), and
// etc/tmpfiles.d/nio-agent.conf when there are tmpfiles rules. The running systemd
// needs `systemctl daemon-reload` (and `systemd-tmpfiles --create`) afterwards.
func (f *File) WriteTo(root string) error {
	unitDir := filepath.Join(root, "etc", "systemd", "system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(unitDir, f.Name), []byte(f.Text), 0o644); err != nil {
		return err
	}
	for _, target := range f.Install["WantedBy"] {
		wants := filepath.Join(unitDir, target+".wants")
		if err := os.MkdirAll(wants, 0o755); err != nil {
			return err
		}
		link := filepath.Join(wants, f.Name)
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Absolute inside the root, as systemctl enable links.
		if err := os.Symlink("/etc/systemd/system/"+f.Name, link); err != nil {
			return err
		}
	}
	if conf := f.TmpfilesConf(); conf != "" {
		dir := filepath.Join(root, "etc", "tmpfiles.d")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "nio-agent.conf"), []byte(conf), 0o644); err != nil {
			return err
		}
	}
	return nil
}
