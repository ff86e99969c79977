// Package facter runs nixos-facter and hands back its report, checked to be a JSON
// object so a broken tool never stores garbage as a machine's facts.
package facter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
)

// maxReport bounds the report read from the tool; real reports are tens of KiB.
const maxReport = 16 << 20

// Config says which nixos-facter to run and how.
type Config struct {
	// Path is the nixos-facter binary, looked up on the agent's PATH when it has no
	// slash.
	Path string
	// SystemdRun runs the tool in a transient unit of its own (systemd-run --pipe)
	// instead of as the agent's child. On NixOS the agent's unit is sandboxed
	// (PrivateDevices, no capabilities, ProtectKernel*), and nixos-facter run inside
	// it would see almost no hardware: the report would be wrong, not an error.
	SystemdRun bool
}

// Command is the argv that runs the tool as cfg says. With SystemdRun the binary is
// resolved here, on the agent's PATH: the transient unit gets systemd's own PATH,
// which has no reason to hold nixos-facter.
//
//	--pipe                    the unit's stdin/stdout/stderr are ours: the report
//	                          comes back on our pipe, nothing touches the journal
//	--wait                    block until it ends and exit with its status
//	--collect                 unload the unit even when it failed
//	--quiet --no-ask-password no chatter, never prompt
//	--service-type=exec       fail at once when the binary cannot be executed
func Command(cfg Config) ([]string, error) {
	if !cfg.SystemdRun {
		return []string{cfg.Path}, nil
	}
	bin, err := exec.LookPath(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", cfg.Path, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("find %s: %w", cfg.Path, err)
	}
	return []string{"systemd-run", "--pipe", "--wait", "--collect", "--quiet", "--no-ask-password",
		"--service-type=exec", "--", bin}, nil
}

// Run executes nixos-facter as cfg says and returns its stdout, which must be a JSON
// object.
func Run(ctx context.Context, cfg Config) ([]byte, error) {
	argv, err := Command(cfg)
	if err != nil {
		return nil, err
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxReport, 64*1024
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("run %s: %w: %s", cfg.Path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if stdout.overflow {
		return nil, fmt.Errorf("%s printed more than %d bytes", cfg.Path, maxReport)
	}
	report := bytes.TrimSpace(stdout.Bytes())
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(report, &obj); err != nil {
		return nil, fmt.Errorf("%s did not print a JSON object: %w", cfg.Path, err)
	}
	return report, nil
}

type limitedBuffer struct {
	bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.overflow = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
