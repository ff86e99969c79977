// Package facter runs nixos-facter and hands back its report, checked to be a JSON
// object so a broken tool never stores garbage as a machine's facts.
package facter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
)

// maxReport bounds the report read from the tool; real reports are tens of KiB.
const maxReport = 16 << 20

// Run executes the nixos-facter binary at path (looked up on PATH when it has no
// slash) and returns its stdout, which must be a JSON object.
func Run(ctx context.Context, path string) ([]byte, error) {
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxReport, 64*1024
	cmd := exec.CommandContext(ctx, path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("run %s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if stdout.overflow {
		return nil, fmt.Errorf("%s printed more than %d bytes", path, maxReport)
	}
	report := bytes.TrimSpace(stdout.Bytes())
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(report, &obj); err != nil {
		return nil, fmt.Errorf("%s did not print a JSON object: %w", path, err)
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
