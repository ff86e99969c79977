package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The systemd test host's fixed paths (inside the host).
const (
	// SystemdHostAgentBinary is where the host's nio-agent executable is installed.
	SystemdHostAgentBinary = "/usr/local/bin/nio-agent"
	// SystemdHostFacter is the host's nixos-facter stand-in (see facterStandIn).
	SystemdHostFacter = "/usr/local/bin/nixos-facter"
	// SystemdHostLibRepo is the git repository the systemd-host fixture flake takes
	// as its locked input fixture-lib.
	SystemdHostLibRepo = "/srv/nio-fixture-lib"
	// SystemdHostActivations is the systemd-host fixture's activation log.
	SystemdHostActivations = "/var/lib/nio-fixture/activations.log"
	// SystemdHostRelease is the file a held activation waits for (hold.txt = yes).
	SystemdHostRelease = "/run/nio-fixture/release"
	// nspawnRebootStatus is systemd-nspawn's exit status when the container's systemd
	// rebooted: systemd-nspawn@.service restarts it on that status, and so does this
	// harness.
	nspawnRebootStatus = 133
)

// SystemdHost is a test host with real systemd as PID 1: the Debian trixie root of
// bin/systemd-host (hack/systemd-host/build.sh: systemd 257, Nix 2.26 with
// nix-daemon, OpenSSH) under an overlay of the run's own, booted by systemd-nspawn in
// a network namespace of its own, so the operator reaches it by address like any
// host. nio-agent runs there as the systemd service the NixOS module defines (the
// caller passes the unit rendered from nix/agent-unit.json), activations go through
// the host's real systemd-run, `systemctl reboot` reboots it (systemd-nspawn exits
// 133 and the harness boots it again, as systemd-nspawn@.service does) and state on
// its disk survives that.
//
// What it is not: a NixOS kernel, a boot loader or a disk. A oneshot unit stands in
// for NixOS's stage 2 (nio-fixture-boot.service: /run/booted-system and
// /run/current-system point at the system profile's generation at boot) and the
// fixture's switch-to-configuration for NixOS's (testkit/nixtest, systemd-host).
type SystemdHost struct {
	// Address is the host's IP address.
	Address string
	// SSHKeyPath is the operator's private SSH key, authorized for root.
	SSHKeyPath string
	// HostKey is sshd's public host key, `ssh-ed25519 AAAA…`.
	HostKey string
	// Dir holds the overlay's directories and the console log.
	Dir string

	name   string
	root   string // the overlay's merged directory: the host's / as seen from here
	netns  string
	env    *Env
	mu     sync.Mutex
	nspawn *Process
	boots  int           // how many times the host has booted
	booted chan struct{} // closed and replaced on every boot's start
	stop   bool
	ended  chan struct{} // closed when the supervising loop has returned
}

// SystemdHostOptions shape a systemd test host.
type SystemdHostOptions struct {
	// Name is the host's directory under the run's directory.
	Name string
	// AgentBinary is the nio-agent executable to install (a static Go binary).
	AgentBinary string
	// InstallAgentUnit writes nio-agent.service, enabled, into the host's root (the
	// path of its / seen from here) before it boots: agentunit.File.WriteTo renders
	// it from nix/agent-unit.json as the NixOS module does.
	InstallAgentUnit func(root string) error
}

// StartSystemdHost makes the overlay and the network namespace, writes the host's
// files and boots it, returning once systemd has finished booting.
func StartSystemdHost(ctx context.Context, e *Env, o SystemdHostOptions) (*SystemdHost, error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	lower := filepath.Join(e.Root, "bin", "systemd-host", "root")
	if _, err := os.Stat(filepath.Join(lower, "usr", "bin", "nix")); err != nil {
		return nil, fmt.Errorf("the systemd test host's root is missing (%v): run `make systemd-host` (hack/systemd-host/build.sh)", err)
	}
	h := &SystemdHost{Dir: e.Path(o.Name), env: e, booted: make(chan struct{}), ended: make(chan struct{})}
	h.root = h.path("merged")
	for _, d := range []string{"upper", "work", "merged", "log"} {
		if err := os.MkdirAll(h.path(d), 0o755); err != nil {
			return nil, err
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + h.path("upper") + ",workdir=" + h.path("work")
	if err := syscall.Mount("overlay", h.root, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mount the host's overlay: %w", err)
	}
	e.Cleanup.Add("systemd host overlay", func() error { return syscall.Unmount(h.root, syscall.MNT_DETACH) })
	if err := h.writeFiles(o); err != nil {
		return nil, err
	}
	var err error
	h.netns, h.Address, err = createNetns(e.Cleanup, nil)
	if err != nil {
		return nil, err
	}
	h.name = "nio-" + strings.TrimPrefix(h.netns, netnsPrefix)
	e.Cleanup.Add("systemd host "+h.name, h.shutdown)
	go h.supervise()
	if err := h.WaitBooted(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *SystemdHost) path(elem ...string) string {
	return filepath.Join(append([]string{h.Dir}, elem...)...)
}

// Path is where path inside the host is, seen from outside (its disk, not /run).
func (h *SystemdHost) Path(path string) string { return filepath.Join(h.root, path) }

func (h *SystemdHost) writeFiles(o SystemdHostOptions) error {
	k, err := newHostKeys(h.path("operator-ssh-key"))
	if err != nil {
		return err
	}
	h.SSHKeyPath, h.HostKey = k.operatorKeyPath, k.hostKey
	agent, err := os.ReadFile(o.AgentBinary)
	if err != nil {
		return err
	}
	files := []struct {
		path string
		mode os.FileMode
		data []byte
	}{
		{"/root/.ssh/authorized_keys", 0o600, k.authorizedKey},
		{"/etc/ssh/ssh_host_ed25519_key", 0o600, k.hostPEM},
		{"/etc/ssh/ssh_host_ed25519_key.pub", 0o644, []byte(h.HostKey + "\n")},
		{SystemdHostAgentBinary, 0o755, agent},
		{SystemdHostFacter, 0o755, []byte(facterStandIn)},
		{"/etc/systemd/system/nio-fixture-boot.service", 0o644, []byte(bootUnit)},
	}
	for _, f := range files {
		dst := h.Path(f.path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(dst, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, f.mode); err != nil {
			return err
		}
	}
	// systemctl enable, done by hand: the units are wanted by multi-user.target.
	wants := h.Path("/etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("/etc/systemd/system/nio-fixture-boot.service", filepath.Join(wants, "nio-fixture-boot.service")); err != nil {
		return err
	}
	if o.InstallAgentUnit == nil {
		return errors.New("systemd host: InstallAgentUnit is required")
	}
	return o.InstallAgentUnit(h.root)
}

// bootUnit stands in for NixOS's stage 2 and boot loader: at boot, the system the
// profile's generation names is the booted and the current system.
const bootUnit = `[Unit]
Description=NIO test host: boot the system profile (stands in for NixOS's stage 2)
DefaultDependencies=no
After=local-fs.target
Before=nio-agent.service sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'p=/nix/var/nix/profiles/system; if [ -e "$p" ]; then s=$(readlink -f "$p"); ln -sfn "$s" /run/booted-system; ln -sfn "$s" /run/current-system; fi'
`

// facterStandIn reports, in nixos-facter's report format (version 1), what it can see
// where it runs: the logical CPUs of /proc/cpuinfo, MemTotal of /proc/meminfo, the
// virtualisation systemd-detect-virt names, plus (under nio_standin) the cgroup it ran
// in and how many device nodes it saw, so a test can tell whether it ran inside the
// agent's sandbox.
const facterStandIn = `#!/bin/sh
# nixos-facter stand-in of the systemd test host (operator/test/harness).
set -eu
cpus=$(grep -c '^processor' /proc/cpuinfo)
mem=$(awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo)
virt=$(systemd-detect-virt 2>/dev/null || echo none)
cgroup=$(sed -n 's|^0::||p' /proc/self/cgroup)
devices=$(ls /dev | wc -l)
printf '{"version":1,"system":"x86_64-linux","virtualisation":"%s","hardware":{"cpu":[{"physical_id":0,"siblings":%s}],"memory":[{"resources":[{"type":"phys_mem","range":%s}]}]},"nio_standin":{"cgroup":"%s","devices":%s}}\n' \
	"$virt" "$cpus" "$mem" "$cgroup" "$devices"
`

// supervise runs systemd-nspawn, and again whenever the host rebooted, until shutdown.
func (h *SystemdHost) supervise() {
	defer close(h.ended)
	for {
		argv := []string{"systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
			"--directory=" + h.root, "--machine=" + h.name, "--hostname=" + h.name,
			"--network-namespace-path=/run/netns/" + h.netns}
		p, err := startProcess(context.Background(), procSpec{name: "systemd-nspawn", argv: argv, env: os.Environ(), logPath: h.path("log", "console.log")})
		h.mu.Lock()
		if err != nil || h.stop {
			h.mu.Unlock()
			if p != nil {
				p.Kill()
			}
			return
		}
		h.nspawn = p
		h.boots++
		close(h.booted)
		h.booted = make(chan struct{})
		h.mu.Unlock()
		<-p.Done()
		var exit *exec.ExitError
		h.mu.Lock()
		stop := h.stop
		h.mu.Unlock()
		if stop || !errors.As(p.err(), &exit) || exit.ExitCode() != nspawnRebootStatus {
			return
		}
	}
}

// Boots is how many times the host has booted.
func (h *SystemdHost) Boots() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.boots
}

// leader is the PID of the host's systemd (PID 1 inside), 0 while none runs.
func (h *SystemdHost) leader() int {
	h.mu.Lock()
	p := h.nspawn
	h.mu.Unlock()
	if p == nil || p.Exited() {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.PID(), p.PID()))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// WaitBooted waits until the host's systemd has finished booting (running, or
// degraded: the failed units are then in the error of whichever check fails later).
func (h *SystemdHost) WaitBooted(ctx context.Context, timeout time.Duration) error {
	return WaitFor(ctx, "systemd test host "+h.name+" booted", timeout, func() (bool, string, error) {
		select {
		case <-h.ended:
			return false, "", fmt.Errorf("systemd-nspawn exited; console: %s", h.path("log", "console.log"))
		default:
		}
		if h.leader() == 0 {
			return false, "no systemd yet", nil
		}
		out, err := h.Exec(ctx, "systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			return true, "", nil
		}
		if err != nil && state == "" {
			return false, err.Error(), nil
		}
		return false, "system " + state, nil
	})
}

// Exec runs argv on the host, in all its namespaces, with a plain root environment,
// and returns its standard output.
func (h *SystemdHost) Exec(ctx context.Context, argv ...string) (string, error) {
	pid := h.leader()
	if pid == 0 {
		return "", errors.New("the systemd test host is not running")
	}
	full := append([]string{"nsenter", "--target", strconv.Itoa(pid), "--all", "--"}, argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("on the systemd host: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Shell runs script with /bin/sh on the host; args are its positional parameters.
func (h *SystemdHost) Shell(ctx context.Context, script string, args ...string) (string, error) {
	return h.Exec(ctx, append([]string{"/bin/sh", "-euc", script, "sh"}, args...)...)
}

// UnitProperty is `systemctl show -p <prop> --value <unit>` on the host.
func (h *SystemdHost) UnitProperty(ctx context.Context, unit, prop string) (string, error) {
	out, err := h.Exec(ctx, "systemctl", "show", "--property="+prop, "--value", unit)
	return strings.TrimSpace(out), err
}

// AgentPID is the main PID of nio-agent.service, 0 when it does not run.
func (h *SystemdHost) AgentPID(ctx context.Context) (int, error) {
	out, err := h.UnitProperty(ctx, "nio-agent.service", "MainPID")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(out)
}

// AgentJournal is the journal of nio-agent.service since the host first booted.
func (h *SystemdHost) AgentJournal(ctx context.Context) (string, error) {
	return h.Exec(ctx, "journalctl", "--no-pager", "--output=cat", "--unit=nio-agent.service")
}

// Link is where a symlink on the host points ("" when it does not exist).
func (h *SystemdHost) Link(ctx context.Context, path string) (string, error) {
	out, err := h.Shell(ctx, `if [ -e "$1" ]; then readlink -f "$1"; fi`, path)
	return strings.TrimSpace(out), err
}

// Activations are the lines of the fixture's activation log.
func (h *SystemdHost) Activations() ([]string, error) {
	b, err := os.ReadFile(h.Path(SystemdHostActivations))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n"), nil
}

// Reboot runs `systemctl reboot` on the host and waits until it has booted again.
func (h *SystemdHost) Reboot(ctx context.Context) error {
	h.mu.Lock()
	before, booted := h.boots, h.booted
	h.mu.Unlock()
	// The command's end races the host's: its error says nothing.
	_, _ = h.Exec(ctx, "systemctl", "reboot")
	select {
	case <-booted:
	case <-h.ended:
		return errors.New("the systemd test host did not come back after reboot")
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("the systemd test host did not reboot within 2m (boot %d)", before)
	}
	return h.WaitBooted(ctx, 2*time.Minute)
}

// ConsoleLog is what the host's systemd printed on its console so far.
func (h *SystemdHost) ConsoleLog() string {
	b, _ := os.ReadFile(h.path("log", "console.log"))
	return string(b)
}

// shutdown powers the host off (SIGTERM to systemd-nspawn asks its systemd to) and
// kills it when it does not stop in time.
func (h *SystemdHost) shutdown() error {
	h.mu.Lock()
	h.stop = true
	p := h.nspawn
	h.mu.Unlock()
	if p == nil {
		return nil
	}
	err := p.Stop(30 * time.Second)
	<-h.ended
	return err
}
