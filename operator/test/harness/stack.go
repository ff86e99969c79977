package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/homystack/nio/testkit/nixtest"
)

// Stack is everything the usage guide needs, running: control plane with NIO
// installed by install.sh, the operator process as its ServiceAccount, the git
// server with a first commit of the fixture flake, and the demo host.
type Stack struct {
	*Env
	// Control is the control plane, NIO installed by install.sh.
	Control *ControlPlane
	// Bin holds the binaries built for this run.
	Bin Binaries
	// Operator is the nio-operator process (as the ServiceAccount).
	Operator *Operator
	// Git serves the configuration repository.
	Git *GitServer
	// Host is the demo host the guide's Machine points at.
	Host *Host
	// NixConfig is the offline NIX_CONFIG everything uses.
	NixConfig string
	// NixPath is the hosts' NIX_PATH: nixpkgs is nixtest's stub.
	NixPath string
	// AnywhereRecord is where the nixos-anywhere stand-in records its runs.
	AnywhereRecord string
	// FirstCommit is the repository's first commit (basic fixture, version 1).
	FirstCommit string

	userOnce sync.Once
	user     string
	userErr  error
}

// UpOptions shape a Stack.
type UpOptions struct {
	// NoDemoHost leaves out the demo host (Stack.Host is nil): the caller brings its
	// own, e.g. a SystemdHost.
	NoDemoHost bool
}

// Up starts the Stack, narrating to out. On error everything started so far is
// cleaned up already.
func Up(ctx context.Context, out io.Writer) (*Stack, error) { return UpWith(ctx, out, UpOptions{}) }

// UpWith is Up shaped by o.
func UpWith(ctx context.Context, out io.Writer, o UpOptions) (s *Stack, err error) {
	e, err := NewEnv(out)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, e.Cleanup.Run())
		}
	}()
	s = &Stack{Env: e}
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	if s.NixConfig, err = NixConfig(e); err != nil {
		return nil, err
	}
	stub := e.Path("nixpkgs")
	if err = nixtest.WriteFlake(stub, "nixpkgs-stub", nil); err != nil {
		return nil, err
	}
	s.NixPath = "nixpkgs=" + stub

	e.Printf("== Building nio-operator and nio-agent\n")
	if s.Bin, err = BuildBinaries(ctx, e); err != nil {
		return nil, err
	}
	e.Printf("\n== Starting the control plane (kube-apiserver + etcd from bin/k8s; no kubelet)\n")
	if s.Control, err = StartControlPlane(e); err != nil {
		return nil, err
	}
	e.Printf("\n== Step 1 of the guide: ./install.sh (without the Deployment: the operator runs as a process here)\n")
	if err = s.Control.Install(ctx); err != nil {
		return nil, err
	}
	saConfig, err := s.Control.ServiceAccountKubeconfig(ctx)
	if err != nil {
		return nil, err
	}
	anywhere, err := s.writeAnywhereStandIn()
	if err != nil {
		return nil, err
	}
	e.Printf("\n== Starting nio-operator as the ServiceAccount %s/%s\n", OperatorNamespace, OperatorServiceAccount)
	s.Operator, err = StartOperator(ctx, e, OperatorOptions{
		Binary: s.Bin.Operator, Kubeconfig: saConfig, NixosAnywhere: anywhere,
		LogPath: e.Path("log", "nio-operator.log"),
		// The host directory is made later; its path is known now.
		Env: []string{"NIO_ANYWHERE_RECORD=" + s.AnywhereRecord, "NIO_ANYWHERE_HOSTS=" + e.Path("hosts")},
	})
	if err != nil {
		return nil, err
	}
	if !o.NoDemoHost {
		e.Printf("\n== Starting the demo host (network + mount namespace: sshd, and nio-agent once it has a TLS identity)\n")
		if s.Host, err = s.NewHost(ctx, "host", false); err != nil {
			return nil, err
		}
		e.Printf("demo host %s: sshd on port %d, agent port %d; logs in %s\n", s.Host.Address, HostSSHPort, HostAgentPort, filepath.Join(s.Host.Dir, "log"))
	}
	e.Printf("\n== Serving the configuration repository with git http-backend (token auth)\n")
	if s.Git, err = StartGitServer(e); err != nil {
		return nil, err
	}
	e.Printf("%s\n", s.Git.RepoURL)
	if s.FirstCommit, err = s.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: "1"}, "worker: version 1"); err != nil {
		return nil, err
	}
	return s, nil
}

// NewHost starts a demo host (see StartHost) whose files live under name in the
// run's directory.
func (s *Stack) NewHost(ctx context.Context, name string, notInstalled bool) (*Host, error) {
	return StartHost(ctx, s.Env, HostOptions{Name: name, AgentBinary: s.Bin.Agent, NixConfig: s.NixConfig, NixPath: s.NixPath, NotInstalled: notInstalled})
}

// Down undoes Up.
func (s *Stack) Down() error { return s.Cleanup.Run() }

// anywhereStandIn records each nixos-anywhere run: its argv (one argument per line)
// and a copy of its --extra-files tree, under $NIO_ANYWHERE_RECORD/<n>/. Then it does
// to the demo host what an install would leave behind, without kexec or a disk wipe:
// the extra files are in place (the host's /var/lib and the sshd host key) and the
// "installed system" boots with nio-agent running (a start request to the host's
// supervisor). Demo hosts are found by address under $NIO_ANYWHERE_HOSTS.
const anywhereStandIn = `#!/bin/sh
# nixos-anywhere stand-in for the e2e suite (see harness.anywhereStandIn).
set -eu
n=$(ls "$NIO_ANYWHERE_RECORD" | wc -l)
rec="$NIO_ANYWHERE_RECORD/$n"
mkdir -p "$rec"
printf '%s\n' "$@" >"$rec/argv"
extra=
target=
prev=
for a in "$@"; do
	case "$prev" in
	--extra-files) extra=$a ;;
	--target-host) target=${a#*@} ;;
	esac
	prev=$a
done
host="$NIO_ANYWHERE_HOSTS/$target"
if [ -z "$target" ] || [ ! -d "$host" ]; then
	echo "nixos-anywhere (stand-in): no demo host at '$target'" >&2
	exit 1
fi
echo "nixos-anywhere (stand-in): run $n for $target; no kexec, no disk wipe"
if [ -n "$extra" ]; then
	cp -a "$extra" "$rec/extra-files"
	cp -a "$extra/var/lib/." "$host/var-lib/"
	cp "$extra/etc/ssh/ssh_host_ed25519_key" "$host/etc/ssh_host_ed25519_key"
fi
printf 'restart\n' >"$host/supervisor.fifo"
echo "nixos-anywhere (stand-in): extra files in place; nio-agent started"
`

func (s *Stack) writeAnywhereStandIn() (string, error) {
	s.AnywhereRecord = s.Path("nixos-anywhere-runs")
	if err := os.MkdirAll(s.AnywhereRecord, 0o755); err != nil {
		return "", err
	}
	p := s.Path("bin", "nixos-anywhere")
	if err := os.WriteFile(p, []byte(anywhereStandIn), 0o755); err != nil {
		return "", err
	}
	return p, nil
}

// LogTails returns the last n lines of every log the run keeps (operator, sshd,
// agent), for a failure report.
func (s *Stack) LogTails(n int) string {
	var b strings.Builder
	for _, p := range []string{s.Path("log", "nio-operator.log"), s.Path("host", "log", "sshd.log"), s.Path("host", "log", "nio-agent.log")} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- last %d lines of %s\n%s\n", len(lines), p, strings.Join(lines, "\n"))
	}
	return b.String()
}
