package install

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Runner settings' defaults.
const (
	DefaultBinary    = "nixos-anywhere"
	DefaultTimeout   = time.Hour
	DefaultKillGrace = 10 * time.Second
	// logTailLines is how many of the last output lines a Result keeps, for events.
	logTailLines = 50
	// maxLineBytes splits longer output lines, so one runaway line cannot grow
	// memory without bound.
	maxLineBytes = 64 << 10
	// maxFacterReportBytes bounds the report read back (real ones are 50–500 KB).
	maxFacterReportBytes = 16 << 20
)

// ErrTimeout is returned when nixos-anywhere ran longer than Runner.Timeout.
var ErrTimeout = errors.New("nixos-anywhere timed out")

// Runner runs nixos-anywhere. The zero value works with the defaults.
type Runner struct {
	// Binary is the nixos-anywhere executable (a path, or a name looked up in PATH).
	Binary string
	// Timeout bounds one run. Default DefaultTimeout.
	Timeout time.Duration
	// KillGrace is how long the process group gets between SIGTERM and SIGKILL on
	// timeout or cancellation. Default DefaultKillGrace.
	KillGrace time.Duration
	// TempDir is where the per-run work directory (SSH key, extra files) is made.
	// Default os.TempDir().
	TempDir string
	// Env is added to the operator's environment for the child (e.g. NIX_CONFIG).
	// TMPDIR is always set to a directory inside the run's work directory.
	Env []string
	// ExtraArgs are extra nixos-anywhere arguments for every run.
	ExtraArgs []string
	// Now is the clock for the marker's time. Default time.Now.
	Now func() time.Time
}

// Request is one install of one Machine.
type Request struct {
	Namespace, Machine string
	// Configuration is the NixosConfiguration being installed (for the marker).
	Configuration string
	// Commit the source was rendered from (for the marker).
	Commit string
	// SourceDir is the rendered source tree (absolute path); FlakeDir and FlakeAttr
	// select the system in it.
	SourceDir, FlakeDir, FlakeAttr string
	// User, Host and Port reach the Machine over SSH.
	User string
	Host string
	Port int
	// SSHPrivateKey is the operator's login key for the Machine. Secret.
	SSHPrivateKey []byte
	// AgentTLS is the agent's TLS identity for the new system.
	AgentTLS AgentTLS
	// HostKey is the new system's SSH host key; generated when nil.
	HostKey *HostKey
	// KexecURL is the optional --kexec image.
	KexecURL string
	// FacterReportPath, when set, is where the configuration expects the Machine's
	// nixos-facter report (relative to SourceDir). If no file is there yet,
	// nixos-anywhere is asked to collect it into that path before building.
	FacterReportPath string
	// OnLine receives each output line (stdout and stderr, merged in the order they
	// were written), from one goroutine at a time. Optional.
	OnLine func(line string)
}

// Result is what a run produced. It is returned with the error of a failed run too.
type Result struct {
	// Args is the argument list nixos-anywhere ran with (paths only, no secrets; the
	// temporary paths no longer exist).
	Args []string
	// HostPublicKey is the installed system's SSH host key in authorized_keys form,
	// for the Machine to pin.
	HostPublicKey string
	// FacterReport is the nixos-facter report nixos-anywhere collected, when it was
	// asked to and the file could be read back.
	FacterReport []byte
	// LogTail is the last output lines.
	LogTail []string
	// ExitCode is the process's exit status (-1 when it did not start or was killed
	// by a signal).
	ExitCode int
	// Duration is how long the process ran.
	Duration time.Duration
}

// Run installs the Machine: it writes the SSH key and the extra-files tree into a
// fresh 0700 work directory, runs nixos-anywhere, and removes the work directory
// afterwards whatever happened.
func (r *Runner) Run(ctx context.Context, req Request) (res Result, err error) {
	res.ExitCode = -1
	if len(req.SSHPrivateKey) == 0 {
		return res, errors.New("install: no ssh private key")
	}
	hostKey := req.HostKey
	if hostKey == nil {
		k, err := GenerateHostKey("root@" + req.Machine)
		if err != nil {
			return res, fmt.Errorf("install %s/%s: %w", req.Namespace, req.Machine, err)
		}
		hostKey = &k
	}
	res.HostPublicKey = hostKey.AuthorizedKey

	work, err := os.MkdirTemp(r.TempDir, "nio-install-")
	if err != nil {
		return res, fmt.Errorf("install %s/%s: work dir: %w", req.Namespace, req.Machine, err)
	}
	defer func() {
		if rmErr := os.RemoveAll(work); rmErr != nil && err == nil {
			err = fmt.Errorf("install %s/%s: remove work dir: %w", req.Namespace, req.Machine, rmErr)
		}
	}()

	// nixos-anywhere copies the key into its own mktemp directory and removes it
	// only when it exits cleanly; pointing TMPDIR into the work directory makes
	// that copy (and any other scratch file) go away with it, even after SIGKILL.
	tmp := filepath.Join(work, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return res, fmt.Errorf("install %s/%s: work dir: %w", req.Namespace, req.Machine, err)
	}
	keyFile := filepath.Join(work, "ssh-key")
	if err := writeNew(keyFile, req.SSHPrivateKey); err != nil {
		return res, fmt.Errorf("install %s/%s: write ssh key: %w", req.Namespace, req.Machine, err)
	}
	extra := filepath.Join(work, "extra-files")
	files := ExtraFiles{
		AgentTLS: req.AgentTLS,
		HostKey:  *hostKey,
		Marker: Marker{
			Machine: req.Machine, Namespace: req.Namespace, Configuration: req.Configuration,
			Commit: req.Commit, Time: r.now().UTC().Truncate(time.Second),
		},
	}
	if err := files.Write(extra); err != nil {
		return res, fmt.Errorf("install %s/%s: %w", req.Namespace, req.Machine, err)
	}

	inv := Invocation{
		SourceDir: req.SourceDir, FlakeDir: req.FlakeDir, FlakeAttr: req.FlakeAttr,
		Namespace: req.Namespace, Machine: req.Machine,
		User: req.User, Host: req.Host, Port: req.Port,
		IdentityFile: keyFile, ExtraFilesDir: extra, KexecURL: req.KexecURL,
		ExtraArgs: r.ExtraArgs,
	}
	if req.FacterReportPath != "" {
		if _, err := relativePath("facter report path", req.FacterReportPath, false); err != nil {
			return res, fmt.Errorf("install %s/%s: %w", req.Namespace, req.Machine, err)
		}
		switch _, statErr := os.Lstat(filepath.Join(req.SourceDir, req.FacterReportPath)); {
		case errors.Is(statErr, fs.ErrNotExist):
			inv.GenerateFacterReport = req.FacterReportPath
		case statErr != nil:
			return res, fmt.Errorf("install %s/%s: facter report: %w", req.Namespace, req.Machine, statErr)
		}
	}
	res.Args, err = inv.Args()
	if err != nil {
		return res, fmt.Errorf("install %s/%s: %w", req.Namespace, req.Machine, err)
	}

	tail := newLineTail(logTailLines, req.OnLine)
	start := time.Now()
	res.ExitCode, err = r.exec(ctx, res.Args, []string{"TMPDIR=" + tmp}, tail.add)
	res.Duration = time.Since(start)
	res.LogTail = tail.lines()
	if err != nil {
		return res, fmt.Errorf("install %s/%s: %w", req.Namespace, req.Machine, err)
	}
	if inv.GenerateFacterReport != "" {
		// Best effort: the host is installed either way, and the agent can report
		// facts later.
		res.FacterReport, _ = readCapped(filepath.Join(req.SourceDir, inv.GenerateFacterReport), maxFacterReportBytes)
	}
	return res, nil
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// lineTail forwards lines to a callback and keeps the last n.
type lineTail struct {
	n    int
	buf  []string
	next func(string)
}

func newLineTail(n int, next func(string)) *lineTail { return &lineTail{n: n, next: next} }

func (t *lineTail) add(line string) {
	if len(t.buf) == t.n {
		t.buf = append(t.buf[:0], t.buf[1:]...)
	}
	t.buf = append(t.buf, line)
	if t.next != nil {
		t.next(line)
	}
}

func (t *lineTail) lines() []string { return append([]string(nil), t.buf...) }

// readLines calls onLine for each line of rd until EOF or error. Lines longer than
// maxLineBytes are split; a final line without a newline is still delivered.
func readLines(rd io.Reader, onLine func(string)) error {
	br := bufio.NewReaderSize(rd, maxLineBytes)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			line := chunk
			if line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
				if len(line) > 0 && line[len(line)-1] == '\r' {
					line = line[:len(line)-1]
				}
			}
			onLine(string(line))
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return nil
		default:
			return err
		}
	}
}

func readCapped(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, limit)
	}
	return data, nil
}
