package harness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"embed"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/homystack/nio/testkit/facterfixture"
	"github.com/homystack/nio/testkit/nixtest"
)

//go:embed standins
var hostFiles embed.FS

// sshdPath is Debian's OpenSSH server.
const sshdPath = "/usr/sbin/sshd"

// Ports the demo host serves on its own address: the defaults a Machine assumes.
const (
	HostSSHPort   = 22
	HostAgentPort = 9443
)

// Host is the demo host: a network namespace with its own address, reached over a
// veth pair, and a private mount namespace in which /nix/var/nix/profiles, /run and
// /var/lib are the host's own (scratch) while /nix/store is the machine's real store.
// In it run OpenSSH's sshd (the operator's SSH key is authorized for root) and the
// real nio-agent with its default paths. It is not a NixOS kernel: activation is the
// fixture systems' switch-to-configuration, which points /run/current-system at the
// new system and logs to /run/activations.log.
type Host struct {
	// Address is the host's IP address (the namespace end of the veth pair).
	Address string
	// SSHKeyPath is the operator's private SSH key, authorized for root on the host.
	SSHKeyPath string
	// HostKey is sshd's public host key, `ssh-ed25519 AAAA…`.
	HostKey string
	// Dir holds the host's scratch state, configs and logs.
	Dir string

	netns  string
	anchor *Process // sshd: its namespaces are the host's
	agent  *Supervisor
	env    *Env
	// cleanup undoes what StartHost did for this host (Close), run at the latest
	// with the run's cleanup.
	cleanup *Cleanup
}

// HostOptions shape the demo host.
type HostOptions struct {
	// Name is the host's directory under the run's directory.
	Name string
	// AgentBinary is the nio-agent executable.
	AgentBinary string
	// NixConfig is the offline NIX_CONFIG for Nix on the host.
	NixConfig string
	// NixPath is NIX_PATH on the host: nixpkgs=<stub>, so configuration modules build
	// through <nixpkgs/nixos> (nixos-rebuild -I nixos-config=<file>) offline.
	NixPath string
	// NotInstalled makes the host one NIO has not installed yet, as a machine awaiting
	// fullInstall is: it has no nio-agent unit (systemctl says so) until the install
	// marker /var/lib/nio/installed exists.
	NotInstalled bool
}

// StartHost creates the namespaces and starts sshd in them. The agent starts once the
// operator has delivered its TLS identity and asked `systemctl restart nio-agent`.
func StartHost(ctx context.Context, e *Env, o HostOptions) (*Host, error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	h := &Host{Dir: e.Path(o.Name), env: e, cleanup: &Cleanup{}}
	e.Cleanup.Add("demo host "+o.Name, h.Close)
	for _, d := range []string{"bin", "profiles", "var-lib/nio-agent", "var-lib/nio", "etc", "log"} {
		if err := os.MkdirAll(h.path(d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := h.writeFiles(); err != nil {
		return nil, err
	}
	confFile := h.path("etc", "nix.conf")
	if err := os.WriteFile(confFile, []byte(o.NixConfig+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := h.writeKeys(); err != nil {
		return nil, err
	}
	fifo := h.path("supervisor.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		return nil, fmt.Errorf("supervisor fifo: %w", err)
	}
	if err := h.createNamespace(); err != nil {
		return nil, err
	}
	// The nixos-anywhere stand-in finds hosts by address here.
	if err := os.MkdirAll(e.Path("hosts"), 0o755); err != nil {
		return nil, err
	}
	link := e.Path("hosts", h.Address)
	if err := os.Symlink(h.Dir, link); err != nil {
		return nil, err
	}
	h.cleanup.Add("demo host link "+link, func() error { return os.Remove(link) })

	path := h.path("bin") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	hostEnv := map[string]string{
		"PATH":                path,
		"NIO_FIXTURE_STATE":   "/run",
		"NIO_HOST_SUPERVISOR": fifo,
		"NIO_FACTER_REPORT":   h.path("etc", "facter.json"),
		"NIX_USER_CONF_FILES": confFile,
	}
	if o.NixPath != "" {
		hostEnv["NIX_PATH"] = o.NixPath
	}
	if o.NotInstalled {
		hostEnv["NIO_HOST_REQUIRE_INSTALLED"] = "1"
	}
	cfgPath := h.path("etc", "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(h.sshdConfig(hostEnv)), 0o644); err != nil {
		return nil, err
	}
	argv := []string{"ip", "netns", "exec", h.netns, "unshare", "--mount", "--propagation", "private",
		h.path("bin", "host-init"), h.path("profiles"), h.path("var-lib"),
		sshdPath, "-D", "-e", "-f", cfgPath}
	anchor, err := startProcess(ctx, procSpec{name: "sshd", argv: argv, env: os.Environ(), logPath: h.path("log", "sshd.log"), ready: "Server listening on", timeout: 30 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("demo host sshd: %w", err)
	}
	h.anchor = anchor

	agentEnv := []string{"HOME=/root", "NIX_CONFIG=" + o.NixConfig}
	for _, k := range sortedKeys(hostEnv) {
		if k != "NIX_USER_CONF_FILES" {
			agentEnv = append(agentEnv, k+"="+hostEnv[k])
		}
	}
	h.agent = newSupervisor(h, fifo, procSpec{
		name: "nio-agent",
		argv: h.inside(o.AgentBinary, "--listen", h.Address+":"+strconv.Itoa(HostAgentPort),
			"--systemd-run=false", "--log-format", "json"),
		env:     agentEnv,
		logPath: h.path("log", "nio-agent.log"),
		ready:   "nio-agent listening",
		timeout: 30 * time.Second,
	})
	h.cleanup.Add("demo host agent", func() error { h.agent.close(); return nil })
	return h, nil
}

// Close stops the host before the run ends: its agent and sshd, and whatever else
// runs in its network namespace, which is deleted. Its directory (logs) stays until
// the run's cleanup. Closing twice does nothing.
func (h *Host) Close() error { return h.cleanup.Run() }

// sshdConfig is the host's sshd_config: root logs in with the operator's key only, and
// every session gets env (PATH with the stand-ins first, Nix settings).
func (h *Host) sshdConfig(env map[string]string) string {
	cfg := []string{
		"Port " + strconv.Itoa(HostSSHPort),
		"ListenAddress " + h.Address,
		"HostKey " + h.path("etc", "ssh_host_ed25519_key"),
		"AuthorizedKeysFile " + h.path("etc", "authorized_keys"),
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"AllowUsers root",
		"PidFile none",
		"LogLevel VERBOSE",
	}
	// One line: sshd keeps only the first SetEnv it reads. No value has spaces.
	setEnv := "SetEnv"
	for _, k := range sortedKeys(env) {
		setEnv += " " + k + "=" + env[k]
	}
	return strings.Join(append(cfg, setEnv), "\n") + "\n"
}

func (h *Host) path(elem ...string) string { return filepath.Join(append([]string{h.Dir}, elem...)...) }

// inside is argv run in the host's namespaces (network and mount, via sshd's PID).
func (h *Host) inside(argv ...string) []string {
	return append([]string{"nsenter", "--target", strconv.Itoa(h.anchor.PID()), "--net", "--mount", "--"}, argv...)
}

// Exec runs argv on the host (in its namespaces) and returns its standard output.
func (h *Host) Exec(ctx context.Context, argv ...string) (string, error) {
	full := h.inside(argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("on the host: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// CurrentSystem is where /run/current-system points on the host ("" when missing).
func (h *Host) CurrentSystem(ctx context.Context) (string, error) {
	out, err := h.Exec(ctx, "sh", "-c", `readlink /run/current-system || true`)
	return strings.TrimSpace(out), err
}

// Activations are the lines of /run/activations.log on the host: "<action> <system>"
// per switch-to-configuration run.
func (h *Host) Activations(ctx context.Context) ([]string, error) {
	out, err := h.Exec(ctx, "sh", "-c", `cat /run/activations.log 2>/dev/null || true`)
	if err != nil {
		return nil, err
	}
	out = strings.TrimSpace(out)
	if out == "" {
		return nil, nil
	}
	return strings.Split(out, "\n"), nil
}

// VarLib is the path, outside the host, of what the host sees as /var/lib/<rel>.
func (h *Host) VarLib(rel string) string { return h.path("var-lib", rel) }

// Agent is the supervisor of the host's nio-agent.
func (h *Host) Agent() *Supervisor { return h.agent }

// SSHLog returns sshd's log so far.
func (h *Host) SSHLog() string {
	b, _ := os.ReadFile(h.path("log", "sshd.log"))
	return string(b)
}

func (h *Host) writeFiles() error {
	for _, name := range []string{"nixos-rebuild", "systemctl", "nixos-facter", "host-init"} {
		b, err := hostFiles.ReadFile("standins/" + name)
		if err != nil {
			return err
		}
		if err := os.WriteFile(h.path("bin", name), b, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(h.path("etc", "facter.json"), facterfixture.Report, 0o644)
}

func (h *Host) writeKeys() error {
	k, err := newHostKeys(h.path("operator-ssh-key"))
	if err != nil {
		return err
	}
	h.SSHKeyPath, h.HostKey = k.operatorKeyPath, k.hostKey
	if err := os.WriteFile(h.path("etc", "authorized_keys"), k.authorizedKey, 0o644); err != nil {
		return err
	}
	return os.WriteFile(h.path("etc", "ssh_host_ed25519_key"), k.hostPEM, 0o600)
}

// hostKeys are a test host's SSH keys: the operator's (its private key written to
// operatorKeyPath, its public key for authorized_keys) and sshd's host key.
type hostKeys struct {
	operatorKeyPath string
	authorizedKey   []byte
	hostPEM         []byte
	hostKey         string // `ssh-ed25519 AAAA…`
}

func newHostKeys(operatorKeyPath string) (hostKeys, error) {
	clientPEM, client, err := newSSHKey()
	if err != nil {
		return hostKeys{}, err
	}
	if err := os.WriteFile(operatorKeyPath, clientPEM, 0o600); err != nil {
		return hostKeys{}, err
	}
	hostPEM, host, err := newSSHKey()
	if err != nil {
		return hostKeys{}, err
	}
	return hostKeys{
		operatorKeyPath: operatorKeyPath,
		authorizedKey:   ssh.MarshalAuthorizedKey(client.PublicKey()),
		hostPEM:         hostPEM,
		hostKey:         strings.TrimSpace(string(ssh.MarshalAuthorizedKey(host.PublicKey()))),
	}, nil
}

// createNamespace makes the demo host's network namespace (see createNetns).
func (h *Host) createNamespace() (err error) {
	h.netns, h.Address, err = createNetns(h.cleanup, func() {
		if h.anchor != nil {
			h.anchor.Kill()
		}
	})
	return err
}

// createNetns makes a network namespace and a veth pair on a random /30 of
// 10.234.0.0/16: .1 on the machine's side, .2 (the returned address) inside. A step
// on cleanup runs beforeDelete (if set), kills whatever still runs in the namespace
// and deletes it, which removes the veth pair.
func createNetns(cleanup *Cleanup, beforeDelete func()) (name, address string, err error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<14))
	if err != nil {
		return "", "", err
	}
	idx := int(n.Int64())
	base := idx * 4
	outer := fmt.Sprintf("10.234.%d.%d", base/256, base%256+1)
	address = fmt.Sprintf("10.234.%d.%d", base/256, base%256+2)
	// The name carries the creating PID so a later run can sweep what a killed one
	// left (sweepNamespaces); interface names must stay within 15 bytes.
	name = fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), idx)
	short := strconv.FormatInt(int64(os.Getpid()%(1<<20)), 36) + strconv.FormatInt(int64(idx), 36)
	outIf, inIf := "nd"+short+"h", "nd"+short+"n"
	sweepNamespaces()
	if err := run("ip", "netns", "add", name); err != nil {
		return "", "", err
	}
	cleanup.Add("network namespace "+name, func() error {
		if beforeDelete != nil {
			beforeDelete()
		}
		killNamespace(name)
		return run("ip", "netns", "del", name)
	})
	for _, argv := range [][]string{
		{"ip", "link", "add", outIf, "type", "veth", "peer", "name", inIf, "netns", name},
		{"ip", "addr", "add", outer + "/30", "dev", outIf},
		{"ip", "link", "set", outIf, "up"},
		{"ip", "-n", name, "addr", "add", address + "/30", "dev", inIf},
		{"ip", "-n", name, "link", "set", inIf, "up"},
		{"ip", "-n", name, "link", "set", "lo", "up"},
	} {
		if err := run(argv...); err != nil {
			return "", "", err
		}
	}
	return name, address, nil
}

// netnsPrefix starts the name of every demo host's network namespace.
const netnsPrefix = "nio-demo-"

// sweepNamespaces deletes demo host namespaces whose creating process is gone (a run
// that was killed before it could clean up), with whatever still runs in them.
func sweepNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, netnsPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pidText); err == nil || pid == os.Getpid() {
			continue
		}
		killNamespace(name)
		_ = run("ip", "netns", "del", name)
	}
}

// killNamespace kills every process in network namespace name.
func killNamespace(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func newSSHKey() ([]byte, ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(block), signer, nil
}

func run(argv ...string) error {
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NixConfig writes an empty flake registry under the run's directory and returns the
// offline NIX_CONFIG for it.
func NixConfig(e *Env) (string, error) {
	return nixtest.WriteOfflineConfig(e.Path("flake-registry.json"))
}
